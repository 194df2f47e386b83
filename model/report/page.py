"""The report page (``index.html``): :func:`render_html` builds it from what the sections
wrote (the summary, each section's figures, the evaluation's scores); its style, its scripts
and the HTML of a figure and of the contents bar.

The page works from ``file://`` with no server, CDN or web font. The scripts
(:data:`HEAD_SCRIPT`, :data:`SCRIPT`) mark the section being read in the contents bar, open
a folded section when a link leads into it, and replace a figure whose file is missing by a
line naming it.
"""
import html
import json

from model.attribution.registry import BASELINE, METHODS
from model.report.plans import plan_html
from model.report.tables import column_readings, format_value, metric_cost_text, table_rows

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


def render_html(summary, sections, results, evaluation):
    """The report page: a sticky contents bar, a summary, then one folding section per
    method (the first open); relative links only, readable offline."""
    escape = html.escape
    dataset = summary.get("dataset_title") or summary["dataset"]  # an older summary.json
    title = f"cnn-viz report: {escape(summary['arch'])} on {escape(dataset)}"
    links = [("#summary", "Summary")] + [(f"#{s.name}", s.title) for s in sections]
    links.append(("#reproduce", "Reproduce"))
    if summary.get("explorer"):
        links.append(("explorer.html", "Explorer (any image, method, class, layer)"))
    parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
             "<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>{title}</title><style>{STYLE}</style>"
             f"<script>{HEAD_SCRIPT}</script></head><body>",
             contents_bar(links), "<main>",
             f"<section id='summary'><h1>{title}</h1>", model_paragraph(summary),
             summary_table(evaluation, summary.get("explorer"), [s.name for s in sections]),
             plan_html(summary["plan"], summary["plan"].get("measured", {}))
             if summary.get("plan") else "", "</section>"]
    if summary.get("interrupted_during"):
        parts.append(f"<p class='failed'><b>This run was interrupted</b> (Ctrl-C or a signal) "
                     f"during the section {escape(summary['interrupted_during'])}: it and the "
                     "sections after it are missing from this page. Run the same command "
                     "again for the whole report.</p>")
    for number, (section, result) in enumerate(zip(sections, results)):
        parts.append(f"<details id='{section.name}'{' open' if number == 0 else ''}>"
                     f"<summary><h2>{escape(section.title)}</h2></summary>"
                     f"<p class='paper'>{escape(section.paper)} &middot; "
                     f"{result['seconds']:.1f} s</p>"
                     f"<p class='what'><b>What it shows:</b> {escape(section.shows)}<br>"
                     f"<b>What to look for:</b> {escape(section.look_for)}</p>")
        for failure in result["failed"]:
            parts.append(f"<p class='failed'>This part failed: {escape(failure)}</p>")
        for note in result.get("notes", []):
            parts.append(f"<p class='note'>Note: {escape(note)}</p>")
        if section.name == "evaluation" and evaluation is not None:
            parts.append(evaluation_table(evaluation))
        for figure in result["figures"]:
            parts.append(figure_html(figure, f"{section.title}: {figure}"))
        parts.append("<details><summary>commands</summary><pre>"
                     + escape("\n".join(result["commands"])) + "</pre></details></details>")
    reproduce = {key: summary.get(key) for key in ("command", "git_commit", "versions", "seed",
                                                   "training_args", "report_args")}
    parts.append("<section id='reproduce'><h2>Reproduce</h2><pre>"
                 + escape(json.dumps(reproduce, indent=1)) + "</pre></section></main>"
                 f"<script>{SCRIPT}</script></body></html>")
    return "\n".join(parts)


# The report section that shows a method's own figures, by the method's registry family.
FAMILY_SECTIONS = {"perturbation": "occlusion", "cam": "cam"}


GRADIENT_SECTION_METHODS = ("saliency", "guided-backprop", "deconvnet")  # deconvnet.py's paths


RANDOMIZED_CHANGES = 0.5  # rank correlation below which a map "changes" with the top layer

# The scores of the summary table, before the randomization verdict and the time.
SUMMARY_SCORES = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "average_drop",
                  "increase_in_confidence", "pointing")


def summary_table(evaluation, explorer, shown):
    """Per method the evaluation's headline figures, each row linking to the method's
    figures (its section among the ``shown`` ones, else the evaluation's maps; and the
    explorer with the method chosen). Keys an older evaluation.json lacks show as "-"."""
    if evaluation is None:
        return ("<p>No evaluation in this report (run it with the evaluation section for the "
                "per-method summary).</p>")
    escape = html.escape
    head = ("<tr><th>method</th><th>deletion AUC (lower better)</th><th>insertion AUC "
            "(higher better)</th><th>ROAD MoRF (lower better)</th><th>ROAD LeRF (higher "
            "better)</th><th>average drop % (lower better)</th><th>increase in confidence % "
            "(higher better)</th><th>pointing game</th><th>top layer randomized</th>"
            "<th>ms / image</th><th>figures</th></tr>")
    rows = []
    for method in evaluation["methods"]:
        scores = evaluation["scores"].get(method, {})
        family = METHODS[method].family if method in METHODS else None
        section = ("deconvnet" if method in GRADIENT_SECTION_METHODS
                   else FAMILY_SECTIONS.get(family, "evaluation"))
        section = section if section in shown else "evaluation"
        links = [f"<a href='#{section}'>{section}</a>"]
        if explorer:
            links.append(f"<a href='explorer.html#method={escape(method)}'>explore</a>")
        correlation = scores.get("randomized_top_layer")
        verdict = "-" if correlation is None else (
            f"r = {correlation:.2f}: "
            + ("changes" if correlation < RANDOMIZED_CHANGES else "barely changes"))
        cells = [escape(method)] + [format_value(key, scores.get(key)) for key in SUMMARY_SCORES]
        cells += [verdict, format_value("ms_per_image",
                                                              scores.get("ms_per_image"))]
        baseline = " class='baseline'" if method == BASELINE else ""
        rows.append(f"<tr{baseline}>" + "".join(f"<td>{cell}</td>" for cell in cells)
                    + f"<td>{' &middot; '.join(links)}</td></tr>")
    return ("<h2>Summary: how far each map can be trusted</h2><div class='scroll'><table>"
            + head + "".join(rows) + "</table></div><p class='note'>From the evaluation "
            f"section. A faithful map changes when the top layer's weights are randomized "
            f"(rank correlation with the original map below {RANDOMIZED_CHANGES}); ROAD "
            "removes the most (MoRF) or least (LeRF) important pixels and fills them from "
            "their neighbours (Rong et al. 2022); average drop and increase in confidence "
            "show the net the image times the map (Grad-CAM++, sec. 4.1); the random row is "
            "the chance level.</p>")


def model_paragraph(summary):
    """The report's first lines: the model, its test accuracy and the training curve (none
    for ``--weights``: they were not trained here)."""
    escape = html.escape
    accuracy = (f"Test accuracy <b>{100 * summary['test_accuracy']:.2f}%</b> on "
                f"{summary['test_images']:,} test images")
    where = f"device {escape(summary['device'])}, seed {summary['seed']}"
    if summary["weights"]:
        return (f"<p>{accuracy}. Weights <code>{escape(summary['weights'])}</code> (not "
                f"trained here, so there is no training curve), {where}.</p>")
    return (f"<p>{accuracy} after {summary['epochs']} epochs. Checkpoint "
            f"<code>{escape(summary['checkpoint'])}</code>, {where}.</p>"
            + figure_html("training_curve.png",
                                      "training curve: loss and accuracy per epoch"))


def road_note(settings):
    """ROAD's settings for the evaluation's note (none in an older evaluation.json)."""
    if "road_percentages" not in settings:
        return ""
    percentages = ", ".join(str(p) for p in settings["road_percentages"])
    return (f"ROAD removes {percentages}% of the pixels, filled by linear imputation with "
            f"noise of sd {settings['road_noise']} (pixel units); ")


def metric_cost_note(evaluation):
    """What each metric cost per image and method, from evaluation.json (older: nothing)."""
    costs = evaluation.get("metric_costs")
    if not costs:
        return ""
    return ("<p class='note'>What the metrics cost per image and method (not in the cost "
            "columns, which are the method's own): " + html.escape(metric_cost_text(costs))
            + ".</p>")


def evaluation_table(evaluation):
    """The method x metric table of evaluation.json as HTML, with a how-to-read row."""
    headings, rows = table_rows(evaluation["methods"],
                                                      evaluation["scores"])
    readings = column_readings(evaluation["scores"])
    lines = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headings) + "</tr>",
             "<tr><td><i>read</i></td>" + "".join(f"<td><i>{html.escape(r)}</i></td>"
                                                  for r in readings) + "</tr>"]
    for row in rows:
        baseline = " class='baseline'" if row[0] == BASELINE else ""
        lines.append(f"<tr{baseline}>" + "".join(f"<td>{html.escape(cell)}</td>"
                                                 for cell in row) + "</tr>")
    settings = evaluation["settings"]
    note = (f"<p>{len(evaluation['test_indices'])} test images, target = {settings['target']};"
            f" deletion and insertion in {settings['deletion_insertion_steps']} steps; "
            + road_note(settings) +
            f"randomization on {settings['sanity_images']} images; occlusion "
            f"{settings['occlusion_patch']} px {settings['occlusion_baseline']} patch, stride "
            f"{settings['occlusion_stride']}; CAM layer {settings['layer']}.</p>")
    return ("<div class='scroll'><table>" + "".join(lines) + "</table></div>" + note
            + metric_cost_note(evaluation))
