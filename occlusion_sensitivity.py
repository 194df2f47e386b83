"""Occlusion sensitivity (Zeiler & Fergus 2014, sec. 4.2): where does covering the image hurt?

    python occlusion_sensitivity.py --dataset shapes --index 0 1 2
    python occlusion_sensitivity.py --dataset mnist --arch simple --patch 6 --stride 2
    python occlusion_sensitivity.py --image cat.png --dataset cifar10 --baseline gray

A square patch (``--patch`` pixels, moved by ``--stride``) is slid over the image and filled with
a baseline (gray, zero = black, the dataset's mean colour, a blurred copy of the image, or a
pixel value in [0, 1]). At every position the occluded image goes through the network and the
target class's softmax probability p(x) is recorded, with the drop p(image) - p(x) and the most
probable class. If the network really uses the object, p falls when the patch covers it (the
paper's Fig. 7b and 7e). All occluded variants go through the model in batches of
``--batch-size``.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from model.cli import ArgumentParser, positive_int, run
from model.engine import fast_layout
from model.errors import UserError
from model.filters import gaussian_blur
from model.heatmaps import (DIVERGING_CMAP, HEATMAP_CMAP, class_colormap, frame, show_image,
                            show_overlay)
from model.images import method_parser, prepare_method, resolve_targets
from model.plotting import Figure, Patch, Rectangle
from model.runtime import write_figure


@dataclass
class OcclusionResult:
    """Occlusion maps for a batch of N images; positions form an (ny, nx) grid.

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


@torch.no_grad()
def compute_occlusion(model, inputs, targets, fill, patch, stride, batch_size=256):
    """Occlusion sensitivity of a batch of images (Zeiler & Fergus 2014, sec. 4.2).

    For every patch position (i, j) the image x is replaced inside the square by ``fill``:
    x_ij = (1 - M_ij) * x + M_ij * fill, with M_ij the square's indicator, and
    p_ij = softmax(f(x_ij))[target]. The N * ny * nx variants are built on the fly and run in
    batches of ``batch_size``, so memory is bounded by the batch, not by the number of
    positions.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images.
        targets: (N,) class per image.
        fill: (N, C, H, W) normalized values for the patch (see :func:`baseline_images`).
        patch, stride: square side and step in pixels.

    Returns:
        :class:`OcclusionResult`.
    """
    count, _, height, width = inputs.shape
    tops, lefts = patch_positions(height, patch, stride), patch_positions(width, patch, stride)
    in_rows = _covered(tops, patch, height).to(inputs.device)  # (ny, H)
    in_cols = _covered(lefts, patch, width).to(inputs.device)  # (nx, W)
    windows = (in_rows[:, None, :, None] & in_cols[None, :, None, :]).flatten(0, 1)  # (P, H, W)
    positions = len(windows)

    base = torch.softmax(model(inputs), dim=1)
    base_probability = base.gather(1, targets[:, None])[:, 0]
    probability = torch.empty(count * positions, dtype=base.dtype, device=inputs.device)
    top_class = torch.empty(count * positions, dtype=torch.int64, device=inputs.device)
    for start in range(0, count * positions, batch_size):
        flat = torch.arange(start, min(start + batch_size, count * positions),
                            device=inputs.device)
        image_index, position_index = flat // positions, flat % positions
        mask = windows[position_index][:, None]  # (B, 1, H, W)
        variants = torch.where(mask, fill[image_index], inputs[image_index])  # (B, C, H, W)
        scores = torch.softmax(model(fast_layout(variants)), dim=1)
        probability[flat] = scores.gather(1, targets[image_index, None])[:, 0]
        top_class[flat] = scores.argmax(1)
    grid = (count, len(tops), len(lefts))
    probability, top_class = probability.view(grid), top_class.view(grid)
    drop = base_probability[:, None, None] - probability
    # Each pixel's mean drop over the windows that cover it (captum's per-pixel averaging).
    coverage = windows.to(drop.dtype).sum(0)  # (H, W)
    summed = torch.einsum("np,phw->nhw", drop.flatten(1), windows.to(drop.dtype))
    pixel_drop = summed / coverage.clamp_min(1.0)
    return OcclusionResult(probability, drop, top_class, base_probability, pixel_drop,
                           tops, lefts)


def occluded_image(image, fill, top, left, patch):
    """``image`` with the square at (top, left) replaced by ``fill`` (both (C, H, W))."""
    occluded = image.clone()
    occluded[:, top:top + patch, left:left + patch] = fill[:, top:top + patch, left:left + patch]
    return occluded


def plot_occlusion(image, fill, result, index, patch, classes, title, strip=8):
    """The teaching figure for image ``index`` of ``result``.

    Top row: the input, the target probability per patch position (paper Fig. 7b), the drop
    per pixel over the image, and the most probable class per position (Fig. 7e). Bottom row: a
    strip of occluded inputs, each titled with the target probability it leaves.

    Args:
        image, fill: (C, H, W) in [0, 1]: the input and the patch fill.
        classes: class names.
        title: the figure title (true class, prediction, target).
    """
    figure = Figure(figsize=(14, 5.2))
    grid = figure.add_gridspec(2, strip, height_ratios=[2.3, 1.0], hspace=0.35, wspace=0.6)
    quarter = strip // 4
    axes = [figure.add_subplot(grid[0, k * quarter:(k + 1) * quarter]) for k in range(4)]
    height, width = image.shape[1:]
    extent = (-0.5, width - 0.5, height - 0.5, -0.5)  # stretch the position grid over the image
    show_image(axes[0], image, f"input (p = {result.base_probability[index]:.3f})")

    probability_map = axes[1].imshow(result.probability[index].cpu().numpy(), cmap=HEATMAP_CMAP,
                                     vmin=0.0, vmax=1.0, extent=extent)
    frame(axes[1], "p(target) with the patch here")
    figure.colorbar(probability_map, ax=axes[1], fraction=0.046, pad=0.04)

    drop = result.pixel_drop[index]
    limit = max(float(drop.abs().max()), 1e-3)
    drop_map = show_overlay(axes[2], image, drop, "drop of p(target), per pixel",
                            cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
    figure.colorbar(drop_map, ax=axes[2], fraction=0.046, pad=0.04)

    top_class = result.top_class[index].cpu().numpy()
    colormap = class_colormap(len(classes))
    axes[3].imshow(top_class, cmap=colormap, vmin=-0.5, vmax=len(classes) - 0.5,
                   extent=extent, interpolation="nearest")
    frame(axes[3], "most probable class")
    present = sorted(set(top_class.flatten().tolist()))
    axes[3].legend(handles=[Patch(color=colormap(c), label=classes[c]) for c in present],
                   loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)

    # Sweep the patch along the row of positions where it hurts most, so the strip shows the
    # probability falling as the patch crosses what the network uses.
    row = int(result.probability[index].min(1).values.argmin())
    columns = torch.linspace(0, len(result.lefts) - 1, strip).round().long().tolist()
    for slot, column in enumerate(columns):
        top, left = int(result.tops[row]), int(result.lefts[column])
        axis = figure.add_subplot(grid[1, slot])
        show_image(axis, occluded_image(image, fill, top, left, patch),
                   f"p = {result.probability[index, row, column]:.2f}")
        axis.add_patch(Rectangle((left - 0.5, top - 0.5), patch, patch, fill=False,
                                 edgecolor="red", linewidth=1.2))
    figure.suptitle(title)
    return figure


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[method_parser("occlusion_sensitivity")])
    parser.add_argument("--patch", type=positive_int, default=4,
                        help="side of the occluding square in pixels (default: 4)")
    parser.add_argument("--stride", type=positive_int, default=1,
                        help="step between patch positions in pixels (default: 1)")
    # A flat patch is itself a square-shaped object to a network that knows squares: on
    # shapes a gray patch lowers p(target) even on the background (pointing game 79.5% for
    # gray vs 92.5% for blur, bench/pointing.py), so the default fill adds no new shape.
    parser.add_argument("--baseline", default="blur",
                        help="patch fill: blur (the image blurred, sigma = patch/4), gray "
                             "(the paper's), zero (black), mean (dataset mean colour), or a "
                             "pixel value in [0, 1] (default: blur)")
    return parser


def explain(args):
    device, model, info, selection = prepare_method(args)
    with torch.no_grad():
        logits = model(selection.inputs)
    targets = resolve_targets(args.target, info, logits, selection.labels)
    fill = baseline_images(selection.inputs, info, args.baseline, args.patch)
    result = compute_occlusion(model, selection.inputs, targets, fill, args.patch, args.stride,
                               args.batch_size)
    images, fills = info.denormalize(selection.inputs), info.denormalize(fill)
    predictions = logits.argmax(1)
    for index, name in enumerate(selection.names):
        label = int(selection.labels[index])
        title = (f"{name}: true {info.classes[label] if label >= 0 else '?'}, "
                 f"predicted {info.classes[predictions[index]]}; "
                 f"target {info.classes[targets[index]]}, {args.patch}px {args.baseline} "
                 f"patch, stride {args.stride}")
        figure = plot_occlusion(images[index], fills[index], result, index, args.patch,
                                info.classes, title)
        write_figure(figure, Path(args.out) / f"occlusion_{name}.png")


def main(argv=None):
    return run(explain, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
