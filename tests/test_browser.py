"""The report's pages in a real browser: ``index.html`` and ``explorer.html`` opened from
``file://`` in headless Chromium (Debian's ``chromium`` and ``chromium-driver``), driven by
Selenium. Where the browser is missing the tests skip, saying why (``pytest.ini`` has -rs).
"""
import base64
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from model.report.explorer import read_explorer_data
from model.report.sections import SECTION_NAMES

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
# As the machine notes say: without the background-networking flags Chromium keeps trying to
# reach Google's hosts, which a closed network refuses.
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1400,1000")


def missing_browser():
    """Why the browser tests cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium)"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install chromium chromium-driver)"
    return None


if missing_browser():
    pytest.skip(f"browser tests skipped: {missing_browser()}", allow_module_level=True)

from selenium import webdriver  # noqa: E402 -- only where the browser is
from selenium.webdriver.chrome.options import Options  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    options = Options()
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path_factory.mktemp('chromium')}")
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture(scope="module")
def report(shapes_report):
    """The full report of tests/test_report.py (conftest.py builds it once): every section and
    an explorer of 4 images."""
    return shapes_report


def open_page(driver, path, fragment="", width=1400):
    driver.set_window_size(width, 1000)
    driver.get(Path(path).resolve().as_uri() + fragment)
    driver.get_log("browser")  # a fresh log for this page: the earlier page's entries go
    driver.refresh()
    WebDriverWait(driver, 10).until(
        lambda d: d.execute_script("return document.readyState") == "complete")


def console_errors(driver):
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] == "SEVERE"]


def load_every_image(driver):
    """Open every section and load every lazy image; then the images that did not load."""
    driver.execute_script("document.querySelectorAll('details').forEach(d => d.open = true);"
                          "for (const i of document.images) i.loading = 'eager';")
    WebDriverWait(driver, 20).until(lambda d: d.execute_script(
        "return [...document.images].every(i => i.complete)"))
    return driver.execute_script(
        "return [...document.images].filter(i => !(i.naturalWidth > 0))"
        ".map(i => i.getAttribute('src'))")


def test_the_report_page_loads_every_figure_without_errors(browser, report):
    open_page(browser, report / "index.html")
    assert load_every_image(browser) == []
    count = browser.execute_script("return document.images.length")
    figures = json.loads((report / "summary.json").read_text())["sections"]
    assert count == 1 + sum(len(section["figures"]) for section in figures)  # + the curve
    assert console_errors(browser) == []
    alts = browser.execute_script("return [...document.images].map(i => i.alt)")
    assert all(alt.strip() for alt in alts)


def test_every_contents_link_lands_on_its_section_and_opens_it(browser, report):
    open_page(browser, report / "index.html")
    links = browser.find_elements(By.CSS_SELECTOR, "nav#contents a[href^='#']")
    targets = [link.get_attribute("href").split("#")[1] for link in links]
    assert targets == ["summary", *SECTION_NAMES, "reproduce"]
    bar = browser.execute_script(
        "return document.getElementById('contents').getBoundingClientRect().bottom")
    for target in targets:
        browser.find_element(By.CSS_SELECTOR, f"nav#contents a[href='#{target}']").click()
        # The link's hashchange handler opens a folded section: it runs after the click.
        WebDriverWait(browser, 5).until(lambda d: d.execute_script(
            f"const e = document.getElementById('{target}');"
            "return e.tagName !== 'DETAILS' || e.open;"), f"{target} not opened")
        top = browser.execute_script(
            f"return document.getElementById('{target}').getBoundingClientRect().top")
        # at the top of the window below the sticky bar, or the page ends before it can be
        assert bar - 2 <= top <= bar + 80 or browser.execute_script(
            "return window.innerHeight + window.scrollY >= document.body.scrollHeight - 2"), \
            (target, top)
        if target != "reproduce":  # the last is too short to reach the top of the window
            WebDriverWait(browser, 5).until(lambda d: d.find_element(
                By.CSS_SELECTOR, "nav#contents a.current").get_attribute("href").endswith(
                f"#{target}"), f"{target} not marked as the current section")


def test_a_summary_row_leads_to_its_figures_in_one_click(browser, report):
    open_page(browser, report / "index.html")
    row = browser.find_element(By.XPATH, "//section[@id='summary']//tr[td[1]='occlusion']")
    row.find_element(By.LINK_TEXT, "occlusion").click()
    assert browser.execute_script("return document.getElementById('occlusion').open")
    open_page(browser, report / "index.html")
    row = browser.find_element(By.XPATH, "//section[@id='summary']//tr[td[1]='occlusion']")
    row.find_element(By.LINK_TEXT, "explore").click()
    WebDriverWait(browser, 10).until(lambda d: "explorer.html" in d.current_url)
    assert Select(browser.find_element(By.ID, "method")).first_selected_option.text == \
        "occlusion"


def test_no_horizontal_scroll_at_768_px(browser, report):
    for page in ("index.html", "explorer.html"):
        open_page(browser, report / page, width=768)
        browser.execute_script("document.querySelectorAll('details').forEach(d => "
                               "d.open = true)")
        assert browser.execute_script(
            "return document.documentElement.scrollWidth <= window.innerWidth"), page


def test_missing_files_are_named_on_the_pages(browser, report, tmp_path):
    damaged = tmp_path / "report"
    shutil.copytree(report, damaged)
    gone = sorted(damaged.glob("occlusion/*.png"))[0]
    gone.unlink()
    (damaged / "explorer_data.js").unlink()
    open_page(browser, damaged / "index.html")
    load_every_image(browser)
    browser.execute_script("for (const i of document.images) if (i.complete && "
                           "!i.naturalWidth) markMissing(i);")  # lazily loaded ones
    notes = [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".missing")]
    assert any(f"occlusion/{gone.name}" in note for note in notes), notes
    open_page(browser, damaged / "explorer.html")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "explorer_data.js is missing" in error.text


def test_explorer_data_of_another_version_is_named_not_misread(browser, report, tmp_path):
    shutil.copytree(report, tmp_path / "report")
    (tmp_path / "report" / "explorer_data.js").write_text(
        'window.EXPLORER_DATA = {"format": "cnn-viz-explorer", "version": 0};')
    open_page(browser, tmp_path / "report" / "explorer.html")
    error = browser.find_element(By.ID, "error")
    assert error.is_displayed() and "another version of cnn-viz" in error.text
    assert console_errors(browser) == []


def explorer_arrays(report):
    """What explorer_data.js holds, decoded: (data, inputs (N, H, W, 3), maps
    (combos, N, T, H, W))."""
    data = read_explorer_data(report / "explorer_data.js")
    count, slots = len(data["images"]), len(data["images"][0]["targets"])
    height, width = data["height"], data["width"]
    inputs = np.frombuffer(base64.b64decode(data["inputs"]), np.uint8).reshape(
        count, height, width, 3)
    maps = np.frombuffer(base64.b64decode(data["maps"]), np.uint8).reshape(
        len(data["combos"]), count, slots, height, width)
    return data, inputs, maps


def canvas_pixels(driver, panel, name):
    """The RGB pixels of one canvas of an explorer panel: (H, W, 3)."""
    values = driver.execute_script(
        f"const c = document.querySelector('#{panel} canvas.{name}');"
        "return [c.width, c.height, Array.from(c.getContext('2d')"
        ".getImageData(0, 0, c.width, c.height).data)];")
    width, height, rgba = values
    return np.array(rgba, dtype=np.uint8).reshape(height, width, 4)[..., :3]


def expected_map(data, maps, method, layer, image, slot):
    combo = next(i for i, c in enumerate(data["combos"])
                 if c["method"] == method and c["layer"] == layer)
    signed = data["methods"][method]["signed"]
    table = np.array(data["colormaps"]["signed" if signed else "unsigned"], dtype=np.uint8)
    return table[maps[combo, image, slot]]


def choose(driver, control, value):
    Select(driver.find_element(By.ID, control)).select_by_value(str(value))


def test_the_explorer_shows_the_precomputed_map_of_every_choice(browser, report):
    data, inputs, maps = explorer_arrays(report)
    open_page(browser, report / "explorer.html")
    assert console_errors(browser) == []
    layered = [c for c in data["combos"] if c["layer"] is not None]
    choices = [(c["method"], c["layer"]) for c in (layered[:1] + layered[-1:])]
    choices += [(c["method"], None) for c in data["combos"] if c["layer"] is None][:3]
    for number, (method, layer) in enumerate(choices):
        image, slot = number % len(data["images"]), number % 4
        choose(browser, "image", image)
        choose(browser, "method", method)
        choose(browser, "target", slot)
        if layer is not None:
            choose(browser, "layer", layer)
        shown = canvas_pixels(browser, "panel1", "map")
        assert np.array_equal(shown, expected_map(data, maps, method, layer, image, slot)), \
            (method, layer, image, slot)
        assert np.array_equal(canvas_pixels(browser, "panel1", "input"), inputs[image])
    # The overlay: opacity a of the map over the image's gray levels.
    browser.execute_script("const o = document.getElementById('opacity'); o.value = 0.25;"
                           "o.dispatchEvent(new Event('input'));")
    method, layer = choices[-1]
    colour = expected_map(data, maps, method, layer, image, slot).astype(float)
    gray = inputs[image].astype(float) @ np.array([0.299, 0.587, 0.114])
    overlay = 0.25 * colour + 0.75 * gray[..., None]
    assert np.abs(canvas_pixels(browser, "panel1", "overlay") - overlay).max() <= 1
    assert console_errors(browser) == []


def test_the_explorer_shows_the_counterfactual_map_the_confidence_and_the_scores(browser,
                                                                                 report):
    """Beside Grad-CAM its counterfactual map (not a method of its own in the menu), under it
    p(target) on the image and on map x image, and the method's row of the evaluation."""
    data, inputs, maps = explorer_arrays(report)
    layer = next(c["layer"] for c in data["combos"] if c["method"] == "gradcam")
    open_page(browser, report / "explorer.html",
              f"#image=1&method=gradcam&target=2&layer={layer}&opacity=0.6")
    methods = [option.get_attribute("value") for option in
               Select(browser.find_element(By.ID, "method")).options]
    assert "gradcam" in methods and not any(":" in method for method in methods)
    colour = expected_map(data, maps, "gradcam:counterfactual", layer, 1, 2).astype(float)
    gray = inputs[1].astype(float) @ np.array([0.299, 0.587, 0.114])
    overlay = 0.6 * colour + 0.4 * gray[..., None]
    assert np.abs(canvas_pixels(browser, "panel1", "counterfactual") - overlay).max() <= 1
    combo = next(c for c in data["combos"] if (c["method"], c["layer"]) == ("gradcam", layer))
    image = data["images"][1]
    line = browser.find_element(By.CSS_SELECTOR, "#panel1 p.confidence").text
    assert f"{image['probabilities'][image['targets'][2]]:.3f} on the image" in line
    assert f"{combo['explained'][1][2]:.3f} on the image times this map" in line
    table = browser.find_element(By.CSS_SELECTOR, "#panel1 table.scores").text
    assert f"{data['scores']['gradcam']['deletion_auc']:.3f}" in table and "ROAD" in table
    choose(browser, "method", "saliency")  # no counterfactual map
    assert not browser.find_elements(By.CSS_SELECTOR, "#panel1 canvas.counterfactual")
    assert console_errors(browser) == []


def test_the_explorer_compares_two_methods_steps_with_arrow_keys_and_keeps_the_url(
        browser, report):
    data, _, maps = explorer_arrays(report)
    first, second = data["combos"][0], data["combos"][-1]
    open_page(browser, report / "explorer.html",
              f"#image=1&method={first['method']}&method2={second['method']}&target=2")
    assert not browser.find_element(By.ID, "panel2").get_attribute("hidden")
    assert np.array_equal(canvas_pixels(browser, "panel2", "map"),
                          expected_map(data, maps, second["method"], second["layer"], 1, 2))
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ARROW_RIGHT)
    assert browser.execute_script("return window.explorer.state.image") == 2
    assert "image=2" in browser.current_url
    shared = browser.current_url
    browser.get("about:blank")
    browser.get(shared)  # the same view from the address alone
    assert Select(browser.find_element(By.ID, "image")).first_selected_option.get_attribute(
        "value") == "2"
    assert np.array_equal(canvas_pixels(browser, "panel1", "map"),
                          expected_map(data, maps, first["method"], first["layer"], 2, 2))
    probabilities = browser.find_elements(By.CSS_SELECTOR, "#probabilities li")
    assert len(probabilities) == min(10, len(data["classes"]))
