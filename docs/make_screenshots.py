"""Screenshots of a report's two pages for the README, taken in headless Chromium.

    python visualize_all.py --dataset shapes
    python docs/make_screenshots.py outputs/report_shapes_vgg

Needs Debian's chromium and chromium-driver and Selenium (as tests/test_browser.py); writes
docs/report_page.png and docs/explorer_page.png.
"""
import sys
import time
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service

DOCS = Path(__file__).resolve().parent
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars", "--window-size=1280,900")
VIEWS = (("index.html", "#summary", "report_page.png"),
         ("explorer.html", "#image=1&method=gradcam&target=0&layer=conv4&method2=occlusion"
                           "&opacity=0.6", "explorer_page.png"))


def main():
    report = Path(sys.argv[1]).resolve()
    options = Options()
    for flag in FLAGS:
        options.add_argument(flag)
    options.binary_location = "/usr/bin/chromium"
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        for page, fragment, name in VIEWS:
            driver.get((report / page).as_uri() + fragment)
            time.sleep(1)  # the lazy figures of the first screen
            driver.save_screenshot(str(DOCS / name))
            print(f"wrote {DOCS / name}")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
