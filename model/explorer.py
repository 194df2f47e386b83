"""The report's explorer: every registered method's map of the gallery images, precomputed.

``visualize_all.py`` calls :func:`build_explorer`, which puts two files in the report folder:
``explorer.html``, a static page with plain JavaScript (the template ``model/explorer.html``),
and ``explorer_data.js``, which sets ``window.EXPLORER_DATA`` (a page opened from ``file://``
may not ``fetch`` a file, but it may load a script). The page lets the
reader choose an image, a method, a target class and a layer, and shows the precomputed map.

What is computed: for each gallery image, the targets are its true class and the top-3
predicted classes (:data:`TARGETS` distinct classes, filled up from the next predictions);
every method of the registry (``model.attribution.METHODS``) explains each of them with its
defaults (occlusion with the evaluation's stride, ``model.occlusion.survey_options``), the
layer-taking methods at :func:`explorer_layers`. A map is stored as 8 bits per pixel: an
unsigned map min-max normalized as in the evaluation (``normalize_maps``), a signed one
(``AttributionMethod.signed``) scaled so that 0 is the middle of a diverging colour map
(:func:`signed_bytes`). Images and maps larger than :data:`MAX_SIDE` are averaged down to
it. All maps go into one base64 block, about 1 KB per map at 32 px.
"""
import base64
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .attribution import METHODS
from .cam import cam_layer_applies
from .architectures import conv_layer_names
from .heatmaps import DIVERGING_CMAP, HEATMAP_CMAP, colour_table, normalize_maps
from .images import sample_test_images
from .occlusion import survey_options
from .runtime import atomic_open

FORMAT, VERSION = "cnn-viz-explorer", 1
TARGETS = 4  # the true class and the top-3 predicted ones
# Images and maps are stored at most this many pixels a side (the page shows them 192 px
# wide): a 224 px map is 49 KB, and the ~2,500 maps of 16 images would make 170 MB.
MAX_SIDE = 112
TEMPLATE = Path(__file__).with_name("explorer.html")


def explorer_layers(conv_layers):
    """The layers a layer-taking method is shown at: the last conv layer (every method's
    default), one in the middle and the first, without repeats."""
    chosen = [conv_layers[-1], conv_layers[len(conv_layers) // 2], conv_layers[0]]
    return list(dict.fromkeys(chosen))


def explorer_targets(labels, probabilities, count=TARGETS):
    """Each image's targets: its true class, then its predicted classes from the most
    probable on, skipping repeats, ``count`` in all (fewer where there are fewer classes).

    Args:
        labels: (N,) true classes; probabilities: (N, K).
    Returns:
        (N, min(count, K)) int64 class indices.
    """
    ranked = probabilities.argsort(dim=1, descending=True)
    rows = []
    for label, order in zip(labels.tolist(), ranked.tolist()):
        rows.append(list(dict.fromkeys([label] + order))[:min(count, probabilities.shape[1])])
    return torch.tensor(rows, dtype=torch.int64)


def signed_bytes(maps):
    """Signed (N, H, W) maps as uint8 with 0 at 128: value / (largest magnitude of its map),
    so that red and blue mean the same share of each map's extreme."""
    scale = maps.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None]
    return to_bytes(0.5 + 0.5 * maps / scale)


def to_bytes(maps):
    """Maps in [0, 1] as uint8 0..255 (rounded)."""
    return (maps.clamp(0, 1) * 255).round().to(torch.uint8)


def stored_side(side):
    """The side, in pixels, images and maps of ``side`` px are stored at."""
    return min(side, MAX_SIDE)


def shrink(values, side):
    """(N, C, H, W) float values averaged down to ``side`` x ``side`` (unchanged if smaller
    already): area averaging keeps a map's mass where it was."""
    if values.shape[-1] <= side:
        return values
    return F.interpolate(values, size=(side, side), mode="area")


def explorer_maps(model, inputs, targets, conv_layers, info, batch_size=256, progress=None):
    """Every registered method's maps of ``inputs`` for each of their targets.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N, T) class indices per image.
        conv_layers: the model's conv layers, in order (:func:`explorer_layers` picks three).
        progress: called with each (method, layer) before it is computed, if given.
    Returns:
        list of (method name, layer or None, (N, T, H, W) uint8 maps), in registry order.
    """
    count, slots = targets.shape
    repeated = inputs.repeat_interleave(slots, dim=0)  # (N * T, C, H, W), image-major
    flat_targets = targets.reshape(-1).to(inputs.device)
    results = []
    for name, method in METHODS.items():
        layers = [None]
        if "layer" in method.needs:
            layers = [layer for layer in explorer_layers(conv_layers)
                      if "gap-linear" not in method.needs
                      or cam_layer_applies(model, layer, inputs[:1])]
        for layer in layers:
            if progress:
                progress(name, layer)
            options = survey_options(inputs.shape[-1]) if name == "occlusion" else {}
            maps = method(model, repeated, flat_targets, layer=layer, info=info,
                          batch_size=batch_size, **options).detach().float().cpu()
            maps = shrink(maps[:, None], stored_side(maps.shape[-1]))[:, 0]
            stored = signed_bytes(maps) if method.signed else to_bytes(normalize_maps(maps))
            results.append((name, layer, stored.view(count, slots, *maps.shape[1:])))
    return results


def explorer_data(title, info, images, labels, probabilities, targets, maps, names):
    """The JSON-ready content of ``explorer_data.js``.

    Args:
        images: (N, C, H, W) uint8 inputs as shown; labels: (N,); probabilities: (N, K);
        targets: (N, T); maps: :func:`explorer_maps`'s list; names: the images' names.
    """
    rgb = images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images
    side = stored_side(rgb.shape[-1])
    rgb = shrink(rgb.float(), side).round().to(torch.uint8)
    combos = [{"method": name, "layer": layer} for name, layer, _ in maps]
    block = torch.stack([stored for _, _, stored in maps]) if maps else torch.zeros(0)
    methods = {name: {"family": METHODS[name].family, "paper": METHODS[name].paper,
                      "equation": METHODS[name].equation, "display": METHODS[name].display,
                      "signed": METHODS[name].signed} for name, _, _ in maps}
    return {
        "format": FORMAT, "version": VERSION, "title": title,
        "height": side, "width": side, "classes": list(info.classes),
        "images": [{"name": name, "label": int(label),
                    "probabilities": [round(p, 5) for p in row.tolist()],
                    "targets": target_row.tolist()}
                   for name, label, row, target_row in zip(names, labels, probabilities,
                                                           targets)],
        "methods": methods, "combos": combos,
        # (images, H, W, 3) and (combos, images, targets, H, W) uint8, row-major
        "inputs": base64.b64encode(rgb.permute(0, 2, 3, 1).contiguous().numpy()).decode(),
        "maps": base64.b64encode(block.contiguous().numpy()).decode(),
        "colormaps": {"unsigned": colour_table(HEATMAP_CMAP),
                      "signed": colour_table(DIVERGING_CMAP)},
    }


def build_explorer(model, info, test_set, predictions, device, out, *, title, count=None,
                   seed=0, progress=None):
    """Precompute the explorer's maps for ``count`` seeded test images (right and wrong
    decisions, as the report's gallery; default 16, 4 above 64 px, where Score-CAM's and
    Ablation-CAM's passes per map grow with the channels) and write ``explorer.html`` and
    ``explorer_data.js`` into ``out``.

    Args:
        predictions: the model's predictions on ``test_set`` (``model.images.test_predictions``).
        progress: called with each (method, layer) before it is computed, if given.
    Returns:
        the two paths.
    """
    count = count or (16 if info.image_size <= 64 else 4)
    indices, _ = sample_test_images(model, test_set, count, seed, device, wrong_share=0.34,
                                    predictions=predictions)
    images = test_set.images[indices]
    inputs = info.normalize(images.to(device))
    with torch.no_grad():
        probabilities = torch.softmax(model(inputs).float(), dim=1).cpu()
    labels = test_set.labels[indices]
    targets = explorer_targets(labels, probabilities)
    maps = explorer_maps(model, inputs, targets, conv_layer_names(model), info,
                         progress=progress)
    data = explorer_data(title, info, images, labels, probabilities, targets, maps,
                         [f"test_{index}" for index in indices.tolist()])
    return write_explorer(out, data)


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
