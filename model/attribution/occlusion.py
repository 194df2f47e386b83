"""Occlusion sensitivity (Zeiler & Fergus 2014, sec. 4.2): the core, batched over images and
patch positions.

A square patch is slid over the image and filled with a baseline (gray, zero = black, the
dataset's mean colour, a blurred copy of the image, or a pixel value in [0, 1]). At every
position the occluded image goes through the network and the target class's softmax
probability is recorded, with the drop from the unoccluded image and the most probable class.
All occluded variants go through the model in batches, and several targets of an image read
their probabilities from the same occluded passes.
"""
from dataclasses import dataclass

import torch

from model.attribution.blur import gaussian_blur
from model.attribution.incremental import (
    DEFAULT_MAX_MEMORY_MB,
    incremental_plan,
    positions_per_batch,
)
from model.attribution.registry import register
from model.data.datasets import small_images
from model.errors import UserError
from model.runtime.batching import variant_batch
from model.runtime.device import fast_layout
from model.nets.folding import fold_batch_norm


@dataclass
class OcclusionResult:
    """Occlusion maps for a batch of N images; positions form an (ny, nx) grid.

    The shapes are for one target per image; for T targets per image ``probability``,
    ``drop`` and ``pixel_drop`` have a target axis after the image axis, (N, T, ...), and
    ``base_probability`` is (N, T).

    Attributes:
        probability: (N, ny, nx) target probability with the patch at each position.
        drop: (N, ny, nx) unoccluded target probability minus ``probability``.
        top_class: (N, ny, nx) most probable class with the patch at each position.
        base_probability: (N,) target probability of the unoccluded image.
        pixel_drop: (N, H, W) per pixel, the mean drop over the positions whose patch covers
            it (pixels no patch covers get 0): the drop map in image coordinates.
        tops: (ny,) and ``lefts`` (nx,): pixel coordinates of the patch positions.
    """

    probability: torch.Tensor
    drop: torch.Tensor
    top_class: torch.Tensor
    base_probability: torch.Tensor
    pixel_drop: torch.Tensor
    tops: torch.Tensor
    lefts: torch.Tensor


def patch_positions(size, patch, stride):
    """Top (or left) coordinates of every patch position along one axis of ``size`` pixels.

    Positions step by ``stride`` from 0, and the last one is moved flush with the far edge so
    that every pixel is covered by at least one patch.
    """
    if patch > size:
        raise UserError(f"--patch {patch} is larger than the {size}x{size} image")
    starts = list(range(0, size - patch + 1, stride))
    if starts[-1] != size - patch:
        starts.append(size - patch)
    return torch.tensor(starts)


def baseline_images(inputs, info, baseline, patch):
    """The fill for the patch, as a normalized (N, C, H, W) batch.

    Args:
        baseline: ``gray`` (pixel 0.5), ``zero`` (black), ``mean`` (the dataset's mean colour),
            ``blur`` (the image blurred with a Gaussian of sigma patch/4), or a number in [0, 1].
    """
    pixels = info.denormalize(inputs)  # (N, C, H, W) in [0, 1]
    if baseline == "blur":
        return info.normalize(gaussian_blur(pixels, sigma=max(1.0, patch / 4)))
    if baseline == "mean":
        return torch.zeros_like(inputs)  # the mean colour is 0 after normalization
    value = {"gray": 0.5, "zero": 0.0}.get(baseline)
    if value is None:
        try:
            value = float(baseline)
        except ValueError:
            raise UserError(f"--baseline {baseline}: use gray, zero, mean, blur or a number "
                            "in [0, 1]") from None
        if not 0.0 <= value <= 1.0:
            raise UserError(f"--baseline {baseline}: a pixel value must lie in [0, 1]")
    return info.normalize(torch.full_like(pixels, value))


def _covered(starts, patch, size):
    """(len(starts), size) bool: which pixels of an axis each patch position covers."""
    pixels = torch.arange(size)[None]
    return (pixels >= starts[:, None]) & (pixels < starts[:, None] + patch)


# Incremental occlusion is used above this image side unless asked for or against: there it
# gives the same maps sooner (see incremental_pays); at and below it, no faster.
INCREMENTAL_ABOVE_SIDE = 64


def incremental_pays(height, width):
    """Whether incremental occlusion is faster than running every occluded image whole, for
    images of ``height`` x ``width``: above ``INCREMENTAL_ABOVE_SIDE`` px. Measured with the
    default geometry (``occlusion_geometry``) on a 2-core "AMD EPYC" (Zen 5), float32: the
    vgg at 32 px (patch 4, stride 2) 0.017 s per image either way; the trained MobileNetV2 at
    224 px (patch 32, stride 16, photos) 0.82 s against 1.24 s."""
    return min(height, width) > INCREMENTAL_ABOVE_SIDE


@torch.no_grad()
def compute_occlusion(model, inputs, targets, fill, patch, stride, batch_size=256,
                      incremental=None, approximate=None, max_memory_mb=DEFAULT_MAX_MEMORY_MB):
    """Occlusion sensitivity of a batch of images (Zeiler & Fergus 2014, sec. 4.2).

    For every patch position (i, j) the image x is replaced inside the square by ``fill``:
    x_ij = (1 - M_ij) * x + M_ij * fill, with M_ij the square's indicator, and
    p_ij = softmax(f(x_ij))[target]. The N * ny * nx variants are built on the fly and run in
    batches of ``batch_size``, so memory is bounded by the batch, not by the number of
    positions (and by ``model.runtime.batching.variant_batch``'s pixel budget for large
    images).

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images.
        targets: (N,) class per image, or (N, T) several: each target's probability and drop
            are read from the same occluded logits.
        fill: (N, C, H, W) normalized values for the patch (see :func:`baseline_images`).
        patch, stride: square side and step in pixels.
        incremental: compute f(x_ij) layer by layer on the changed boxes only
            (``model.attribution.incremental``, Krypton): the same logits, less work; batches of
            positions then fill ``max_memory_mb`` instead of ``batch_size``. None (the
            default): where it pays (:func:`incremental_pays`).
        approximate: Krypton's projective-field threshold tau in (0, 1] (implies
            ``incremental``): faster, no longer exact.

    Returns:
        :class:`OcclusionResult`.
    """
    several = targets.dim() == 2
    targets = targets if several else targets[:, None]  # (N, T)
    slots = targets.shape[1]
    count, _, height, width = inputs.shape
    tops, lefts = patch_positions(height, patch, stride), patch_positions(width, patch, stride)
    in_rows = _covered(tops, patch, height).to(inputs.device)  # (ny, H)
    in_cols = _covered(lefts, patch, width).to(inputs.device)  # (nx, W)
    windows = (in_rows[:, None, :, None] & in_cols[None, :, None, :]).flatten(0, 1)  # (P, H, W)
    positions = len(windows)

    base = torch.softmax(model(inputs), dim=1)
    base_probability = base.gather(1, targets)  # (N, T)
    probability = torch.empty(count * positions, slots, dtype=base.dtype, device=inputs.device)
    top_class = torch.empty(count * positions, dtype=torch.int64, device=inputs.device)
    plan = None
    if incremental is None:
        incremental = incremental_pays(height, width)
    if incremental or approximate is not None:
        plan = incremental_plan(model, inputs[:1], patch, tops, lefts, approximate)
    if plan is None:
        batches = _plain_logits(model, inputs, fill, windows, variant_batch(batch_size, inputs))
    else:
        batches = _incremental_logits(plan, inputs, fill, max_memory_mb)
    for flat, logits in batches:
        scores = torch.softmax(logits, dim=1)
        probability[flat] = scores.gather(1, targets[flat // positions])  # (B, T)
        top_class[flat] = scores.argmax(1)
    grid = (count, len(tops), len(lefts))
    # (N * ny * nx, T) -> (N, T, ny, nx)
    probability = probability.view(*grid, slots).permute(0, 3, 1, 2).contiguous()
    top_class = top_class.view(grid)
    drop = base_probability[:, :, None, None] - probability
    # Each pixel's mean drop over the windows that cover it (captum's per-pixel averaging).
    coverage = windows.to(drop.dtype).sum(0)  # (H, W)
    summed = torch.einsum("np,phw->nhw", drop.flatten(2).flatten(0, 1),
                          windows.to(drop.dtype))  # (N * T, H, W)
    pixel_drop = (summed / coverage.clamp_min(1.0)).view(count, slots, height, width)
    if not several:
        probability, drop = probability[:, 0], drop[:, 0]
        base_probability, pixel_drop = base_probability[:, 0], pixel_drop[:, 0]
    return OcclusionResult(probability, drop, top_class, base_probability, pixel_drop,
                           tops, lefts)


def _plain_logits(model, inputs, fill, windows, batch_size):
    """(flat indices, logits) per batch of ``batch_size`` occluded images, image-major."""
    positions = len(windows)
    total = len(inputs) * positions
    net = fold_batch_norm(model)  # the same logits, up to float32 rounding, sooner
    for start in range(0, total, batch_size):
        flat = torch.arange(start, min(start + batch_size, total), device=inputs.device)
        image_index, position_index = flat // positions, flat % positions
        mask = windows[position_index][:, None]  # (B, 1, H, W)
        variants = torch.where(mask, fill[image_index], inputs[image_index])  # (B, C, H, W)
        yield flat, net(fast_layout(variants))


def _incremental_logits(plan, inputs, fill, max_memory_mb):
    """(flat indices, logits) per batch of positions from an incremental ``plan``: each image
    is run once whole, then its positions in batches that fit ``max_memory_mb``."""
    positions = plan.positions
    batch_size = positions_per_batch(plan, inputs.element_size(), max_memory_mb)
    for image in range(len(inputs)):
        plan.keep(inputs[image])
        for start in range(0, positions, batch_size):
            index = torch.arange(start, min(start + batch_size, positions))
            yield (image * positions + index).to(inputs.device), plan.logits(fill[image], index)


SMALL_IMAGE_GEOMETRY = (4, 1)  # patch and stride up to 64 px: every position of a 4 px patch

# The stride where many images are mapped at once (the evaluation, the report's explorer):
# up to 64 px the script's stride 1 costs 4x the passes of stride 2 and ranks pixels alike.
SURVEY_STRIDE = 2


def survey_options(image_size):
    """Occlusion's options where many images are mapped at once: ``SURVEY_STRIDE`` up to
    64 px, the scaled defaults of :func:`occlusion_geometry` above."""
    return {"stride": SURVEY_STRIDE} if small_images(image_size) else {}


def occlusion_geometry(image_size, patch=None, stride=None):
    """Patch side and stride in pixels, the defaults scaled with the image: 4 px at stride 1
    up to 64 px (28 and 32 px datasets), beyond that 1/7 and 1/14 of the side (32 and 16 at
    224 px, about Zeiler & Fergus's grey squares on ImageNet), so a map costs about 170
    forward passes instead of 50,000."""
    if small_images(image_size):
        default_patch, default_stride = SMALL_IMAGE_GEOMETRY
    else:
        default_patch, default_stride = round(image_size / 7), round(image_size / 14)
    return patch or default_patch, stride or default_stride


@register("occlusion", paper="Zeiler & Fergus 2014",
          equation="sec. 4.2: the drop of p(target) when a patch covers the pixel",
          family="perturbation", cost="1 + patch positions forward", signed=True,
          display="mean drop over the patch positions covering each pixel (negative: "
                  "covering it helps)",
          defaults={"patch": None, "stride": None, "baseline": "blur", "batch_size": 256,
                    "incremental": None, "approximate": None,
                    "max_memory_mb": DEFAULT_MAX_MEMORY_MB},
          needs={"info"}, shares_passes=True)
def occlusion_map(model, inputs, targets, *, info, patch, stride, baseline, batch_size,
                  incremental, approximate, max_memory_mb):
    patch, stride = occlusion_geometry(inputs.shape[-1], patch, stride)
    fill = baseline_images(inputs, info, baseline, patch)
    return compute_occlusion(model, inputs, targets, fill, patch, stride, batch_size,
                             incremental, approximate, max_memory_mb).pixel_drop
