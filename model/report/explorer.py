"""The report's explorer page: a survey of every method's maps, written for the browser.

``visualize_all.py`` surveys a gallery (``model.evaluation.survey.survey_gallery``) and
hands it to :func:`explorer_data` and :func:`write_explorer`, which put two files in the report
folder: ``explorer.html``, a static page with plain JavaScript (the template
``model/report/explorer.html``), and ``explorer_data.js``, which sets ``window.EXPLORER_DATA``
(a page opened from ``file://`` may not ``fetch`` a file, but it may load a script). The page
lets the reader choose an image, a method, a target class and a layer, and shows the
precomputed map, beside it a gradient method's counterfactual map, p(target) on the map's
explanation image (Average Drop's and Increase in Confidence's O for that map), and the
method's row of the report's evaluation when there is one. Images larger than ``MAX_SIDE``
(``model.attribution.maps``) are averaged down to it. All maps go into one base64 block,
about 1 KB per map at 32 px.
"""
import base64
import json
from pathlib import Path

import torch

from model.attribution.maps import shrink, stored_side
from model.attribution.registry import method_variant
from model.figures.heatmaps import DIVERGING_CMAP, HEATMAP_CMAP, colour_table
from model.report.tables import COLUMNS
from model.runtime.files import atomic_open

FORMAT, VERSION = "cnn-viz-explorer", 2

TEMPLATE = Path(__file__).with_name("explorer.html")


def explorer_data(title, info, survey, scores=None, smoothing=()):
    """The JSON-ready content of ``explorer_data.js``.

    Args:
        survey: a ``model.evaluation.survey.GallerySurvey`` (images, labels, probabilities,
            targets, every method's stored maps and explained probabilities, names).
        scores: the evaluation's ``scores`` (method -> metric -> value), shown with each
            method, or None.
        smoothing: the on/off options the survey's CAM maps were computed with
            (``aug-smooth``, ``eigen-smooth``), named on the page.
    """
    images, labels, probabilities = survey.images, survey.labels, survey.probabilities
    targets, maps, names = survey.targets, survey.maps, survey.names
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    side = stored_side(rgb.shape[-1])
    rgb = shrink(rgb.float(), side).round().to(torch.uint8)
    # explained: (images, targets) p(target) on the map's explanation image, per combo
    combos = [{"method": name, "layer": layer,
               "explained": [[round(p, 4) for p in row] for row in explained.tolist()]}
              for name, layer, _, explained in maps]
    block = torch.stack([stored for _, _, stored, _ in maps]) if maps else torch.zeros(0)
    methods = {}
    for name, _, _, _ in maps:
        method, switched_on = method_variant(name)
        methods[name] = {"family": method.family, "paper": method.paper,
                         "equation": method.equation, "display": method.display,
                         "signed": method.signed, "variant": ", ".join(switched_on) or None}
    return {
        "format": FORMAT, "version": VERSION, "title": title,
        "height": side, "width": side, "classes": list(info.classes),
        "images": [{"name": name, "label": int(label),
                    "probabilities": [round(p, 5) for p in row.tolist()],
                    "targets": target_row.tolist()}
                   for name, label, row, target_row in zip(names, labels, probabilities,
                                                           targets)],
        "methods": methods, "combos": combos, "scores": scores or {},
        "smoothing": list(smoothing),
        "score_names": {key: f"{name} ({better})" for key, name, better in COLUMNS},
        # (images, H, W, 3) and (combos, images, targets, H, W) uint8, row-major
        "inputs": base64.b64encode(rgb.permute(0, 2, 3, 1).contiguous().numpy()).decode(),
        "maps": base64.b64encode(block.contiguous().numpy()).decode(),
        "colormaps": {"unsigned": colour_table(HEATMAP_CMAP),
                      "signed": colour_table(DIVERGING_CMAP)},
    }


SCRIPT_PREFIX = b"window.EXPLORER_DATA = "


def read_explorer_data(path):
    """The content of an ``explorer_data.js`` that :func:`write_explorer` wrote."""
    text = Path(path).read_bytes().removeprefix(SCRIPT_PREFIX).rstrip().rstrip(b";")
    return json.loads(text)


def write_explorer(folder, data):
    """Write ``explorer.html`` and ``explorer_data.js`` into ``folder``; returns both paths."""
    folder = Path(folder)
    page, script = folder / "explorer.html", folder / "explorer_data.js"
    with atomic_open(script) as file:
        file.write(SCRIPT_PREFIX + json.dumps(data).encode() + b";\n")
    with atomic_open(page) as file:
        file.write(TEMPLATE.read_bytes())
    return [page, script]
