"""Occlusion sensitivity (Zeiler & Fergus 2014, sec. 4.2): where does covering the image hurt?

    python occlusion_sensitivity.py --dataset shapes --index 0 1 2
    python occlusion_sensitivity.py --dataset mnist --arch simple --patch 6 --stride 2
    python occlusion_sensitivity.py --image cat.png --dataset cifar10 --baseline gray
    python occlusion_sensitivity.py --dataset shapes --index 0 1 --save-maps occlusion.npz
    python occlusion_sensitivity.py --arch vgg16 --weights vgg16.pth --image photo.jpg \
        --patch 16 --stride 8 --no-incremental

A square patch (``--patch`` pixels, moved by ``--stride``) is slid over the image and filled with
a baseline (gray, zero = black, the dataset's mean colour, a blurred copy of the image, or a
pixel value in [0, 1]). At every position the occluded image goes through the network and the
target class's softmax probability p(x) is recorded, with the drop p(image) - p(x) and the most
probable class. If the network really uses the object, p falls when the patch covers it (the
paper's Fig. 7b and 7e). All occluded variants go through the model in batches of
``--batch-size``. Above 64 px each layer recomputes only the box a patch changes (incremental
occlusion: Krypton, Nakandala et al. 2019): the same maps, faster (``--no-incremental`` runs
every occluded image whole, ``--incremental`` forces it at any size);
``--approximate TAU`` cuts each box to TAU of the map's side (faster, no longer exact).
"""
import argparse
import sys
from pathlib import Path

import torch

from model.attribution import METHODS
from model.attribution.occlusion import (
    INCREMENTAL_ABOVE_SIDE,
    SMALL_IMAGE_GEOMETRY,
    baseline_images,
    compute_occlusion,
    incremental_pays,
    occlusion_geometry,
)
from model.cli.arguments import ArgumentParser, positive_fraction, positive_int
from model.cli.method_inputs import method_parser, prepare_method, save_maps
from model.cli.running import run
from model.cli.targets import resolve_targets
from model.figures.heatmaps import (
    DIVERGING_CMAP,
    HEATMAP_CMAP,
    class_colormap,
    frame,
    show_image,
    show_overlay,
)
from model.figures.plotting import Figure, Patch, Rectangle, write_figure

DEFAULTS = METHODS["occlusion"].defaults
SAVED = ("the drop of p(target) per pixel (the registry's occlusion map); probability "
         "(N, ny, nx) p(target) with the patch at each position, tops (ny,) and lefts (nx,) "
         "the positions' pixel coordinates, method, patch, stride and baseline")


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
                            parents=[method_parser("occlusion_sensitivity", maps=SAVED)])
    parser.add_argument("--patch", type=positive_int, default=None,
                        help=f"side of the occluding square in pixels (default: "
                             f"{SMALL_IMAGE_GEOMETRY[0]} up to 64 px images, else 1/7 of the "
                             "side: 32 at 224)")
    parser.add_argument("--stride", type=positive_int, default=None,
                        help=f"step between patch positions in pixels (default: "
                             f"{SMALL_IMAGE_GEOMETRY[1]} up to 64 px images, else 1/14 of the "
                             "side: 16 at 224)")
    # A flat patch is itself a square-shaped object to a network that knows squares: on
    # shapes a gray patch lowers p(target) even on the background (pointing game 79.5% for
    # gray vs 92.5% for blur, bench/pointing.py), so the default fill adds no new shape.
    parser.add_argument("--baseline", default=DEFAULTS["baseline"],
                        help=f"patch fill: blur (the image blurred, sigma = patch/4), gray "
                             f"(the paper's), zero (black), mean (dataset mean colour), or a "
                             f"pixel value in [0, 1] (default: {DEFAULTS['baseline']})")
    parser.add_argument("--incremental", action=argparse.BooleanOptionalAction, default=None,
                        help="recompute only the box of each layer that a patch changes "
                             "(Krypton): the same maps, faster where the patch is small "
                             "against the image; batches fill --max-memory (default: on "
                             f"above {INCREMENTAL_ABOVE_SIDE} px, where it was measured "
                             "faster; --no-incremental runs every occluded image whole)")
    parser.add_argument("--approximate", type=positive_fraction, default=None, metavar="TAU",
                        help="incremental with Krypton's projective-field threshold: each "
                             "conv or pool box cut to TAU of its map's side, centred "
                             "(faster, no longer exact; docs/methods.md lists the error per TAU; "
                             "default: exact)")
    parser.add_argument("--max-memory", type=positive_int, metavar="MB",
                        default=DEFAULTS["max_memory_mb"],
                        help="incremental: memory for one batch of patch positions, in MiB "
                             f"(default: {DEFAULTS['max_memory_mb']})")
    return parser


def explain(args):
    device, model, info, selection = prepare_method(args)
    with torch.no_grad():
        logits = model(selection.inputs)
    targets = resolve_targets(args.target, info, logits, selection.labels)
    args.patch, args.stride = occlusion_geometry(info.image_size, args.patch, args.stride)
    fill = baseline_images(selection.inputs, info, args.baseline, args.patch)
    if args.incremental is None:  # the choice made is saved with the maps
        args.incremental = incremental_pays(info.image_size, info.image_size)
    result = compute_occlusion(model, selection.inputs, targets, fill, args.patch, args.stride,
                               args.batch_size, args.incremental, args.approximate,
                               args.max_memory)
    images, fills = info.denormalize(selection.inputs), info.denormalize(fill)
    predictions, written = logits.argmax(1), []
    for index, name in enumerate(selection.names):
        label = int(selection.labels[index])
        title = (f"{name}: true {info.classes[label] if label >= 0 else '?'}, "
                 f"predicted {info.classes[predictions[index]]}; "
                 f"target {info.classes[targets[index]]}, {args.patch}px {args.baseline} "
                 f"patch, stride {args.stride}"
                 + (f", approximate (tau {args.approximate})" if args.approximate else ""))
        figure = plot_occlusion(images[index], fills[index], result, index, args.patch,
                                info.classes, title)
        written.append(write_figure(figure, Path(args.out) / f"occlusion_{name}.png"))
    if args.save_maps:
        written.append(save_maps(args, info, selection, result.pixel_drop, targets,
                                 method="occlusion", probability=result.probability,
                                 tops=result.tops, lefts=result.lefts))
    return written


def main(argv=None, written=None, notes=None):
    return run(explain, get_args_parser().parse_args(argv), written=written, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
