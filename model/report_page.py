"""The pieces of the report page (``index.html``) that do not depend on what was run: its
style, its scripts and the HTML of a figure and of the contents bar.

The page works from ``file://`` with no server, CDN or web font. The scripts
(:data:`HEAD_SCRIPT`, :data:`SCRIPT`) mark the section being read in the contents bar, open
a folded section when a link leads into it, and replace a figure whose file is missing by a
line naming it.
"""
import html

STYLE = """
* { box-sizing: border-box; }
body { font-family: system-ui, sans-serif; margin: 0; color: #222; line-height: 1.45; }
nav#contents { position: sticky; top: 0; z-index: 2; background: #fff;
               border-bottom: 1px solid #ccc; padding: .4em 1em; display: flex;
               flex-wrap: wrap; gap: .2em .9em; font-size: .85em; }
nav#contents a { color: #2a5db0; text-decoration: none; padding: .1em .2em;
                 border-radius: 3px; }
nav#contents a.current { background: #2a5db0; color: #fff; }
main { max-width: 1200px; margin: 0 auto; padding: 0 1em 3em; }
h1 { font-size: 1.5em; }
section, details { scroll-margin-top: 4.5em; }
details > summary { cursor: pointer; list-style: revert; }
details > summary h2 { display: inline; }
h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em;
     margin-top: 1.6em; }
.paper { color: #666; font-size: .9em; }
.what { background: #f5f7fa; border-left: 4px solid #4a7bd0; padding: .5em .8em; }
figure { margin: 1em 0; } figure img { max-width: 100%; height: auto;
                                       border: 1px solid #eee; }
figcaption { font-size: .8em; color: #666; }
.scroll { overflow-x: auto; max-width: 100%; }
table { border-collapse: collapse; font-size: .85em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: right; }
th { background: #f0f0f0; } td:first-child, th:first-child { text-align: left; }
tr.baseline td { color: #777; } .failed, .missing { color: #b00; } .note { color: #555; }
.missing { border: 1px dashed #b00; padding: .5em; display: inline-block; }
code, pre { font-size: .85em; background: #f5f5f5; }
pre { white-space: pre-wrap; word-break: break-word; }
"""

HEAD_SCRIPT = """
"use strict";
// A figure whose file is gone: say so where it was. In <head>, so that it is defined before
// any image fails.
function markMissing(image) {
  const note = document.createElement("span");
  note.className = "missing";
  note.textContent = "missing: " + image.getAttribute("src") +
    " (deleted or not written; run visualize_all.py again)";
  image.replaceWith(note);
}
"""

SCRIPT = """
"use strict";
for (const image of document.images) {
  if (image.complete && image.naturalWidth === 0 && image.getAttribute("src")) {
    markMissing(image);
  }
}
// A link into a folded section opens it.
function openTarget() {
  const target = document.getElementById(decodeURIComponent(location.hash.slice(1)));
  if (!target) return;
  const folded = target.closest("details");
  if (folded && !folded.open) { folded.open = true; target.scrollIntoView(); }
}
window.addEventListener("hashchange", openTarget);
openTarget();
// Mark the section being read in the contents bar: the last one whose top has passed the
// bar's bottom edge.
const bar = document.getElementById("contents");
const links = [...bar.querySelectorAll("a[href^='#']")]
  .map((link) => [document.getElementById(link.getAttribute("href").slice(1)), link])
  .filter(([section]) => section);
function markCurrent() {
  const line = bar.getBoundingClientRect().bottom + 40;
  let current = links.length ? links[0][1] : null;
  for (const [section, link] of links) {
    if (section.getBoundingClientRect().top <= line) current = link;
  }
  for (const [, link] of links) link.classList.toggle("current", link === current);
}
window.addEventListener("scroll", markCurrent, {passive: true});
window.addEventListener("toggle", markCurrent, true);
markCurrent();
"""


def figure_html(path, alt):
    """A lazily loaded figure that opens full size; a missing file shows as a line."""
    path, alt = html.escape(path), html.escape(alt)
    return (f"<figure><a href='{path}'><img src='{path}' alt='{alt}' loading='lazy' "
            f"onerror='markMissing(this)'></a><figcaption>{path}</figcaption></figure>")


def contents_bar(links):
    """The sticky contents bar: ``links`` is a list of (href, text)."""
    return ("<nav id='contents' aria-label='contents'>"
            + "".join(f"<a href='{html.escape(href)}'>{html.escape(text)}</a>"
                      for href, text in links) + "</nav>")
