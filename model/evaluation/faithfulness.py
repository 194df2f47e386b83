"""How faithful is an attribution map? Metrics that need no ground truth.

- Deletion and insertion curves and their areas (Petsiuk et al. 2018, RISE, sec. 4.1).
- Average Drop and Increase in Confidence on the image times its map (Chattopadhay et al.
  2018, Grad-CAM++, sec. 4.1). ROAD, removal with noisy linear imputation, is in
  ``model.evaluation.road``.
- Spearman rank correlation between maps, with ties at their average rank.
- Cascading model randomization (Adebayo et al. 2018, sec. 3.1).

Every function takes and returns tensors; nothing here draws or writes files. What a method
costs (passes, time, memory) is measured in ``model.evaluation.cost``.
"""
import copy

import torch
import torch.nn as nn

from model.attribution.blur import gaussian_blur
from model.attribution.maps import normalize_maps, resize_maps
from model.nets.anatomy import anatomy
from model.nets.folding import fold_batch_norm
from model.runtime.batching import variant_batch
from model.runtime.device import fast_layout

EPSILON = 1e-12


def pixel_order(maps, generator=None):
    """Pixel indices of each map from most to least important: (N, H, W) -> (N, H*W).

    Equal values (the flat zero regions of a ReLU'd CAM, say) are ordered at random, with
    ``generator``, so that ties favour no corner of the image.
    """
    flat = maps.flatten(1).float()
    shuffle = torch.randperm(flat.shape[1], generator=generator).to(flat.device)
    # A stable sort of the shuffled values keeps the random order within ties.
    order = torch.sort(flat[:, shuffle], dim=1, descending=True, stable=True).indices
    return shuffle[order]


def insertion_start(inputs, sigma=None):
    """The image insertion starts from: a strong Gaussian blur (RISE, sec. 4.1).

    ``sigma`` defaults to an eighth of the image side, so that small objects are gone.
    """
    return gaussian_blur(inputs, sigma or inputs.shape[-1] / 8)


@torch.no_grad()
def deletion_insertion_curves(model, inputs, targets, maps, mode, steps=16, substrate=None,
                              batch_size=512, generator=None):
    """Target probability as pixels are deleted or inserted in order of the map (RISE sec. 4.1).

    Deletion starts from the image and replaces the most important pixels first with the
    ``substrate`` (default: zeros, the dataset's mean colour after normalization, as in the
    RISE code); a faithful map makes p(target) fall fast (low area). Insertion starts from the
    substrate (default: :func:`insertion_start`, a blurred copy) and puts the most important
    pixels back first; a faithful map makes p(target) rise fast (high area). After step s of
    ``steps`` the first round(s * H * W / steps) pixels of the order have been changed, over
    every colour channel. All N * (steps + 1) variants run in batches of ``batch_size``.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N,) class per image.
        maps: (N, H, W) importance; mode: ``deletion`` or ``insertion``.
        generator: orders tied pixels (see :func:`pixel_order`).

    Returns:
        (N, steps + 1) target probabilities, step 0 first.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f"mode must be deletion or insertion, not {mode!r}")
    if substrate is None:
        substrate = torch.zeros_like(inputs) if mode == "deletion" else insertion_start(inputs)
    count, _, height, width = inputs.shape
    pixels = height * width
    rank = torch.empty(count, pixels, dtype=torch.int64, device=inputs.device)
    order = pixel_order(maps, generator).to(inputs.device)
    rank.scatter_(1, order, torch.arange(pixels, device=inputs.device).expand(count, -1))
    changed = torch.linspace(0, pixels, steps + 1, device=inputs.device).round().long()
    start, end = (inputs, substrate) if mode == "deletion" else (substrate, inputs)

    curves = torch.empty(count * (steps + 1), dtype=inputs.dtype, device=inputs.device)
    batch_size = variant_batch(batch_size, inputs)
    net = fold_batch_norm(model)  # the same probabilities, up to float32 rounding, sooner
    for first in range(0, len(curves), batch_size):
        flat = torch.arange(first, min(first + batch_size, len(curves)), device=inputs.device)
        image, step = flat // (steps + 1), flat % (steps + 1)
        done = (rank[image] < changed[step, None]).view(-1, 1, height, width)  # (B, 1, H, W)
        variants = torch.where(done, end[image], start[image])  # (B, C, H, W)
        probabilities = torch.softmax(net(fast_layout(variants)), dim=1)
        curves[flat] = probabilities.gather(1, targets[image, None])[:, 0]
    return curves.view(count, steps + 1)


def area_under_curve(curves):
    """Trapezoidal area under (N, S + 1) curves sampled evenly on [0, 1]: (N,)."""
    steps = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(1) / (2 * steps)


def explanation_images(inputs, maps, info=None):
    """The explanation maps E^c = L^c o I of Grad-CAM++ (Chattopadhay et al. 2018, sec. 4.1):
    (N, C, H, W), normalized as ``inputs`` are.

    The map is upsampled to the image (bilinear) and min-max normalized to [0, 1], and
    multiplies the image pixel by pixel, in every channel. The product is taken in pixel
    space [0, 1] (``info.denormalize``), where dark means absent, and normalized again for
    the net (``info.normalize``): a zero map gives a black image, not the dataset's mean
    colour. ``info`` None: ``inputs`` are pixels in [0, 1].
    """
    if maps.shape[-2:] != inputs.shape[-2:]:
        maps = resize_maps(maps, inputs.shape[-1])
    maps = normalize_maps(maps).to(inputs)[:, None]  # (N, 1, H, W) in [0, 1]
    if info is None:
        return maps * inputs
    return info.normalize(maps * info.denormalize(inputs)).to(inputs.dtype)


@torch.no_grad()
def explanation_map_probabilities(model, inputs, targets, maps, info=None, batch_size=512):
    """p(target) on each image and on its explanation map (:func:`explanation_images`):
    Y_i^c and O_i^c of Average Drop and Increase in Confidence (Chattopadhay et al. 2018,
    sec. 4.1). Each batch of ``batch_size`` holds images and their explanation maps together,
    one forward per batch.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) images, normalized with ``info`` (None: pixels in [0, 1]).
        targets: (N,) class per image; maps: (N, h, w) importance, any scale.
        info: the dataset's ``DatasetInfo`` (``normalize`` and ``denormalize``), or None.

    Returns:
        (Y, O): (N,) p(target) on the images and on their explanation maps.
    """
    chunk = max(1, variant_batch(batch_size, inputs) // 2)
    full = torch.empty(len(inputs), dtype=inputs.dtype, device=inputs.device)
    explained = torch.empty_like(full)
    net = fold_batch_norm(model)
    for first in range(0, len(inputs), chunk):
        images = inputs[first:first + chunk]
        masked = explanation_images(images, maps[first:first + chunk], info)
        count = len(images)
        logits = net(fast_layout(torch.cat([images, masked])))  # (2 n, K)
        probabilities = torch.softmax(logits, dim=1)
        classes = targets[first:first + chunk, None].repeat(2, 1)
        chosen = probabilities.gather(1, classes)[:, 0]
        full[first:first + count], explained[first:first + count] = chosen[:count], chosen[count:]
    return full, explained


@torch.no_grad()
def explained_probabilities(model, inputs, targets, maps, info=None, batch_size=512):
    """O_i^c alone (:func:`explanation_map_probabilities`), where p on the image is known
    already (the explorer's): (N,) p(target) on each explanation map."""
    chunk = variant_batch(batch_size, inputs)
    explained = torch.empty(len(inputs), dtype=inputs.dtype, device=inputs.device)
    net = fold_batch_norm(model)
    for first in range(0, len(inputs), chunk):
        masked = explanation_images(inputs[first:first + chunk], maps[first:first + chunk], info)
        probabilities = torch.softmax(net(fast_layout(masked)), dim=1)
        explained[first:first + len(masked)] = probabilities.gather(
            1, targets[first:first + chunk, None])[:, 0]
    return explained


def average_drop(full, explained):
    """Average Drop %, Grad-CAM++ sec. 4.1: 100 * mean_i max(0, Y_i - O_i) / Y_i (lower is
    better): how much of the class's probability the map's region alone loses."""
    return 100 * ((full - explained).clamp(min=0) / full.clamp(min=EPSILON)).mean()


def increase_in_confidence(full, explained):
    """Increase in Confidence %, Grad-CAM++ sec. 4.1: 100 * mean_i 1[Y_i < O_i] (higher is
    better): the share of images the map's region alone is more convincing on."""
    return 100 * (full < explained).to(full.dtype).mean()


def average_ranks(values):
    """Rank of every entry within its row, 1-based, ties sharing their average rank.

    (N, M) -> (N, M) float, the ranks Spearman's coefficient uses.
    """
    values = values.float().contiguous()  # slices of a cascade are strided
    ordered = values.sort(dim=1).values
    below = torch.searchsorted(ordered, values, side="left")  # entries smaller than each
    up_to = torch.searchsorted(ordered, values, side="right")  # entries not larger
    return (below + up_to + 1).float() / 2


def spearman(first, second):
    """Spearman rank correlation between paired maps, per pair: (N, ...) x (N, ...) -> (N,).

    The Pearson correlation of the average ranks. A constant map has no order to compare, so
    its correlation is 0.
    """
    a = average_ranks(first.flatten(1))
    b = average_ranks(second.flatten(1))
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / ((a.square().sum(1) * b.square().sum(1)).sqrt() + EPSILON)


def randomization_stages(model):
    """The layers cascading randomization re-initializes, top first: [(name, modules)].

    Each conv or Linear layer is one stage; a normalization joins the layer before it, since
    the two form one learned filter bank; a block (a residual or inverted-residual block, a
    dense block, an Inception module: ``model.nets.anatomy``, read from the traced pass) is one
    stage with all its layers, as Adebayo et al. randomize Inception v3 block by block.
    """
    stages = []
    body = anatomy(model)
    blocks = {name for name in body.main if body.layers[name].kind == "block"}

    def learned(module):
        return [m for m in module.modules() if hasattr(m, "reset_parameters")
                and any(True for _ in m.parameters(recurse=False))]

    def walk(module, prefix):
        for name, child in module.named_children():
            name = f"{prefix}{name}"
            own = any(True for _ in child.parameters(recurse=False))
            if name in blocks:
                stages.append((name, learned(child)))
            elif isinstance(child, (nn.Conv2d, nn.Linear)):
                stages.append((name, [child]))
            elif own and not any(True for _ in child.children()) and stages:
                stages[-1][1].append(child)  # a normalization: with the layer before it
            else:
                walk(child, f"{name}.")

    walk(model, "")
    return stages[::-1]


# The most randomization stages whose maps the check computes. Each stage costs every method
# its maps again: 20 stages of MobileNetV2 were two thirds of a 224 px evaluation's time
# (bench/evaluation_224.py). The project's nets and ResNet-18 have at most 10.
RANDOMIZATION_POINTS = 10


def evaluated_stages(count, points=RANDOMIZATION_POINTS):
    """Which of ``count`` cascading-randomization stages get their maps computed: every one
    up to ``points`` stages, else ``points`` of them spread evenly from the first (the top
    layer random) to the last (every layer random); never fewer than those two."""
    points = max(points, 2)
    if count <= points:
        return list(range(count))
    return sorted({round(index * (count - 1) / (points - 1)) for index in range(points)})


def cascading_randomization(model, seed=0, points=None):
    """Yield (layer, model) with the weights re-initialized from the top layer down, cumulatively.

    Adebayo et al. 2018, sec. 3.1 (cascading randomization): stage 1 re-initializes the output
    layer, stage 2 also the layer below, and so on down to the first conv layer. Each layer
    gets its fresh PyTorch default initialization (``reset_parameters``; BatchNorm back to the
    identity) from ``seed``. ``model`` itself is never changed and the global random state is
    left as it was; every yielded model is a separate copy in eval mode on the model's device.
    With ``points``, only the stages :func:`evaluated_stages` picks are yielded (the layers
    between are randomized all the same: the cascade stays cumulative).
    """
    device = next(model.parameters()).device
    randomized = copy.deepcopy(model).cpu().eval()  # CPU: the same weights on any device
    stages = randomization_stages(randomized)
    shown = set(evaluated_stages(len(stages), points) if points else range(len(stages)))
    for stage, (name, modules) in enumerate(stages):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + stage)
            for module in modules:
                module.reset_parameters()
        if stage in shown:
            yield name, copy.deepcopy(randomized).to(device)
