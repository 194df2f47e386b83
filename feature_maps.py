"""Filters, feature maps, dead filters and how features evolve during training.

    python feature_maps.py --dataset shapes --index 0               # everything for test image 0
    python feature_maps.py --dataset mnist --arch simple --show filters
    python feature_maps.py --dataset shapes --show evolution        # needs --save-every-epoch

- ``filters``: the first layer's filters as RGB images (3 input channels) or, for 1 input
  channel, as red/blue heatmaps with the weight written in each cell; deeper layers as a grid
  of per-input-channel kernels (a row per filter, a column per input channel).
- ``maps``: every channel of each chosen layer (``--layers``, default every conv layer) for the
  chosen image, the input beside them (a conv name means its conv-BatchNorm-ReLU output).
- ``dead``: per layer, for each channel the share of about ``--num-images`` test images (an
  even spread over the split: every class of a folder) on which it is positive somewhere, and
  the channels never positive (dead filters).
- ``evolution``: from the per-epoch snapshots of ``train_cnn.py --save-every-epoch``, the
  feature maps of the chosen image after each epoch, epochs as columns, a figure per layer.
"""
import math
import sys
from pathlib import Path

import torch

from model.attribution.maps import normalize_maps
from model.cli.arguments import ArgumentParser, positive_int
from model.cli.method_inputs import (
    checkpoint_path,
    has_test_split,
    load_split,
    method_parser,
    prepare_method,
)
from model.cli.running import run
from model.figures.heatmaps import (
    DIVERGING_CMAP,
    HEATMAP_CMAP,
    cell_centers,
    frame,
    grid_mosaic,
    plot_map_table,
    show_image,
    show_mosaic,
    signed_display,
)
from model.figures.plotting import Figure, matplotlib, write_figure
from model.nets.checkpoint import load_checkpoint, load_model, snapshot_path
from model.nets.layers import (
    conv_layer_names,
    first_conv,
    layer_activations,
)
from model.runtime.files import save_json
from model.runtime.notes import note
from model.units.firing import (
    PHOTO_STATISTICS_IMAGES,
    STATISTICS_IMAGES,
    firing_counts,
    statistics_images,
)

VIEWS = ("filters", "maps", "dead", "evolution")


def dead_filter_report(model, dataset, layers, device, batch_size=256):
    """Per layer, the share of images on which each channel is positive somewhere (every
    layer from the same passes: ``model.units.firing``).

    Returns:
        name -> dict with ``active_share`` (K,) in [0, 1] and ``dead`` (channels never positive).
    """
    report = {}
    for layer, counts in firing_counts(model, dataset, layers, device, batch_size).items():
        share = counts.float().cpu() / len(dataset)
        report[layer] = {"active_share": share, "dead": (share == 0).nonzero()[:, 0].tolist()}
    return report


def plot_first_layer(weights, title):
    """First-layer filters (K, C, kh, kw): RGB images for C = 3, annotated heatmaps for C = 1."""
    count = len(weights)
    columns = min(count, 8)
    rows = -(-count // columns)
    figure = Figure(figsize=(1.6 * columns, 1.8 * rows + 0.6))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    limit = float(weights.abs().max())
    for index, kernel in enumerate(weights):
        axis = axes.flat[index]
        axis.axis("on")
        if kernel.shape[0] == 3:
            show_image(axis, signed_display(kernel), f"filter {index}")
            continue
        axis.imshow(kernel[0].numpy(), cmap=DIVERGING_CMAP, vmin=-limit, vmax=limit)
        frame(axis, f"filter {index}")
        if kernel.shape[-1] <= 5:  # small kernels: write every weight in its cell
            for (row, col), value in zip(torch.cartesian_prod(
                    torch.arange(kernel.shape[1]), torch.arange(kernel.shape[2])).tolist(),
                    kernel[0].flatten().tolist()):
                axis.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                          color="white" if abs(value) > 0.6 * limit else "black")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_kernel_grid(weights, title, max_filters=64, max_inputs=64):
    """Deeper-layer kernels: a row per filter, a column per input channel, one shared scale."""
    weights = weights[:max_filters, :max_inputs]
    rows, columns, height, width = weights.shape
    limit = float(weights.abs().max())
    inch_per_pixel = 0.065
    figure = Figure(figsize=(inch_per_pixel * columns * (width + 1) + 1.8,
                             inch_per_pixel * rows * (height + 1) + 1.2))
    axis = figure.subplots()
    artist = show_mosaic(axis, grid_mosaic(weights), DIVERGING_CMAP, -limit, limit)
    step = max(1, rows // 16)
    shown = range(0, rows, step)
    axis.set_yticks(cell_centers(shown, height, height + 1, 1), [str(r) for r in shown],
                    fontsize=7)
    step = max(1, columns // 16)
    shown = range(0, columns, step)
    axis.set_xticks(cell_centers(shown, width, width + 1, 1), [str(c) for c in shown],
                    fontsize=7)
    axis.set(xlabel="input channel", ylabel="filter")
    axis.tick_params(length=0)
    figure.colorbar(artist, ax=axis, fraction=0.03, pad=0.02, label="weight")
    axis.set_title(f"{title} (rows: filters, columns: input channels)", fontsize=10)
    return figure


MAP_CELL = 1.4  # inches per feature map and the input image (one map and its gap)
SMALL_MAP_CELL = 0.8  # for maps under 14 px wide: still 0.1 in per map pixel
LABEL_LINE = 7 * 1.25 / 72  # inches per line of a 7-point label
MARGIN, TITLE_BAND = 0.1, 0.5  # inches around the page, above the maps for the title


def plot_feature_maps(image, activation, title, columns=8):
    """The input and every channel's map (K, h, w) of one layer, each on its own scale.

    Each map is stretched between its own minimum and maximum (its maximum is written above
    it), so a weak channel's pattern is as visible as a strong one's. All maps are one mosaic
    image. The page is laid out in inches from the mosaic (save it with ``tight=False``):
    ``tight_layout`` and a tight crop lay out every label once more each and draw the mosaic
    twice, and MobileNetV2's 19 layers have 2,816 labels. Maps under 14 px get 0.8 in cells,
    their label on two lines, rather than 1.4 in (24 screen pixels per map pixel for its
    1,280 maps of 7 x 7).
    """
    count, height, width = activation.shape
    columns = min(columns, count)
    rows = -(-count // columns)
    small = width < 14
    cell = SMALL_MAP_CELL if small else MAP_CELL
    pixel = cell / (width + 1)  # inches per mosaic pixel
    label_gap = math.ceil(((1 + small) * LABEL_LINE + 0.03) / pixel)
    cells = torch.full((rows * columns, height, width), float("nan"))
    cells[:count] = normalize_maps(activation.cpu())
    mosaic = grid_mosaic(cells.view(rows, columns, height, width), label_gap=label_gap)
    maps_width, maps_height = mosaic.shape[1] * pixel, mosaic.shape[0] * pixel
    figure = Figure()
    heading = figure.suptitle(title, va="top")
    heading_width = heading.get_window_extent().width / figure.dpi
    page_width = max(2 * MARGIN + MAP_CELL + MARGIN + maps_width, heading_width + 2 * MARGIN)
    page_height = TITLE_BAND + max(maps_height, MAP_CELL + 0.25) + MARGIN
    figure.set_size_inches(page_width, page_height)
    heading.set_y(1 - MARGIN / page_height)

    def box(left, top, box_width, box_height):  # inches from the top left -> figure fractions
        return [left / page_width, 1 - (top + box_height) / page_height,
                box_width / page_width, box_height / page_height]

    image_axis = figure.add_axes(box(MARGIN, TITLE_BAND + 0.25, MAP_CELL, MAP_CELL))
    show_image(image_axis, image, "input")
    maps_axis = figure.add_axes(box(2 * MARGIN + MAP_CELL, TITLE_BAND, maps_width, maps_height))
    show_mosaic(maps_axis, mosaic, HEATMAP_CMAP, 0.0, 1.0)
    maps_axis.axis("off")
    separator = ":\n" if small else ": "
    for channel, peak in enumerate(activation.flatten(1).amax(1).tolist()):
        row, column = divmod(channel, columns)
        maps_axis.text(1 + column * (width + 1), row * (height + 1 + label_gap) + label_gap,
                       f"ch {channel}{separator}max {peak:.2f}", fontsize=7, va="bottom",
                       linespacing=1.1)
    return figure


def plot_dead_report(report, title):
    """A bar per channel: the share of images on which it fires; dead channels marked in red
    below the axis (their bars have no height).

    A layer's bars are one collection of rectangles: as 1,280 separate bars (``axis.bar``)
    MobileNetV2's last layer alone took seconds to draw.
    """
    height = 1.9 * len(report) + 0.5
    figure = Figure(figsize=(10, height))
    # Margins in inches (tight_layout measures every tick label, and its suptitle sat over the
    # first axes of a tall figure): 0.5 in for the title, 0.75 in between axes for the tick
    # labels and the next title.
    figure.subplots_adjust(left=0.08, right=0.98, top=1 - 0.75 / height, bottom=0.55 / height,
                           hspace=0.75 / (1.9 - 0.75))
    axes = figure.subplots(len(report), 1, squeeze=False)[:, 0]
    for axis, (layer, entry) in zip(axes, report.items()):
        share = entry["active_share"].double()
        left = torch.arange(len(share), dtype=torch.float64) - 0.4
        bars = torch.stack([left, left, left + 0.8, left + 0.8], 1)  # (K, 4) corners' x
        heights = torch.stack([torch.zeros_like(share), share, share, torch.zeros_like(share)],
                              1)
        colours = ["tab:red" if value == 0 else "tab:blue" for value in share.tolist()]
        axis.add_collection(matplotlib.collections.PolyCollection(
            torch.stack([bars, heights], 2).numpy(), facecolors=colours, linewidths=0))
        if entry["dead"]:
            axis.plot(entry["dead"], [0.0] * len(entry["dead"]), "|", color="tab:red",
                      markersize=8, clip_on=False)
        axis.set(xlim=(-0.5 - 0.02 * len(share), len(share) - 0.5 + 0.02 * len(share)),
                 ylim=(0, 1.05), ylabel="share active",
                 title=f"{layer}: {len(entry['dead'])} dead of {len(share)}")
    axes[-1].set_xlabel("channel")
    figure.suptitle(title, y=1 - 0.1 / height, va="top")
    return figure


def plot_evolution(image, maps_by_epoch, layer, title, max_channels):
    """Rows: channels (the first ``max_channels``); columns: epochs. Each map on its own scale."""
    epochs = list(maps_by_epoch)
    stacked = torch.stack([maps_by_epoch[epoch][:max_channels].float().cpu()
                           for epoch in epochs], 1)  # (channels, epochs, h, w)
    return plot_map_table(image, normalize_maps(stacked.flatten(0, 1)).view_as(stacked),
                          [f"ch {channel}" for channel in range(len(stacked))],
                          [f"epoch {epoch}" for epoch in epochs], f"{title}: {layer}")


def snapshot_epochs(checkpoint):
    """(epoch, path) of every per-epoch snapshot beside ``checkpoint`` from the training run
    that wrote it, in epoch order.

    A snapshot is from that run when its training history (the metrics of every epoch, times
    included) is the start of the checkpoint's; snapshots left by an earlier run with the same
    ``--out`` (another seed, recipe or architecture) are skipped with a note.
    """
    folder = snapshot_path(checkpoint, 1).parent
    history = load_checkpoint(checkpoint)["history"]
    found = sorted((int(path.stem.split("_")[1]), path) for path in folder.glob("epoch_*.pt"))
    ours = [(epoch, path) for epoch, path in found
            if history[:epoch] == load_checkpoint(path)["history"]]
    if len(ours) < len(found):
        note(f"{len(found) - len(ours)} snapshots in {folder} are from another training "
             "run and were skipped; retrain with --save-every-epoch for the evolution of this "
             "one")
    return ours


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[method_parser("feature_maps")])
    parser.add_argument("--show", nargs="+", choices=VIEWS, default=list(VIEWS),
                        help="what to draw (default: all; evolution only where snapshots exist)")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="layers for maps, dead filters and evolution (default: every conv)")
    parser.add_argument("--num-images", type=positive_int, default=None,
                        help="about this many test images, spread over the split, for the "
                             f"dead-filter report (default: {STATISTICS_IMAGES}; "
                             f"{PHOTO_STATISTICS_IMAGES} above 64 px)")
    parser.add_argument("--max-channels", type=positive_int, default=16,
                        help="channels shown in the evolution figures (default: 16)")
    return parser


@torch.no_grad()  # feature maps and weights are only drawn
def visualize(args):
    """Draw the ``--show`` views for the chosen image.

    Returns:
        the paths written, in order: filters, maps, dead-filter figure and JSON, evolution.
    """
    device, model, info, selection = prepare_method(args)
    checkpoint = checkpoint_path(args)
    layers = args.layers or conv_layer_names(model)
    # One pass for the image's maps, before any figure: it also refuses a layer that has none.
    activations = layer_activations(model, selection.inputs[:1], layers)
    out = Path(args.out)
    image, name = info.denormalize(selection.inputs[:1])[0], selection.names[0]
    paths = []

    if "filters" in args.show:
        convs = [first_conv(model, layer) for layer in conv_layer_names(model)]
        convs = list(dict(convs).items())  # a ResNet stage and its first block share a conv
        first_name, first = convs[0]
        paths.append(write_figure(plot_first_layer(first.weight.detach().cpu(),
                                                   f"{first_name} filters"),
                                  out / f"filters_{first_name}.png"))
        for layer, conv in convs[1:]:
            paths.append(write_figure(plot_kernel_grid(conv.weight.detach().cpu(),
                                                       f"{layer} kernels"),
                                      out / f"filters_{layer}.png"))
    if "maps" in args.show:
        for layer, activation in activations.items():
            figure = plot_feature_maps(image, activation[0], f"{name}: {layer} feature maps")
            paths.append(write_figure(figure, out / f"maps_{name}_{layer}.png", tight=False))
    if "dead" in args.show and not has_test_split(info):
        note(f"no dead-filter report: there is no {info.name} test split here")
    elif "dead" in args.show:
        dataset = load_split(info, "test", args).spread(
            args.num_images or statistics_images(info.image_size))
        report = dead_filter_report(model, dataset, layers, device, args.batch_size)
        title = f"share of {len(dataset)} test images on which each channel fires"
        paths.append(write_figure(plot_dead_report(report, title), out / "dead_filters.png"))
        summary = {layer: {"dead": entry["dead"], "active_share": entry["active_share"].tolist()}
                   for layer, entry in report.items()}
        paths.append(save_json(summary, out / "dead_filters.json"))
        for layer, entry in report.items():
            print(f"{layer}: {len(entry['dead'])} dead channels {entry['dead'] or ''}")
    if "evolution" in args.show and not args.weights:  # --weights come without snapshots
        snapshots = snapshot_epochs(checkpoint)  # notes snapshots of another run itself
        folder = snapshot_path(checkpoint, 1).parent
        if not snapshots:
            if not any(folder.glob("epoch_*.pt")):
                note(f"no snapshots in {folder}; train with --save-every-epoch for the "
                     "evolution figures")
            return paths
        maps = {layer: {} for layer in layers}
        for epoch, path in snapshots:
            snapshot, _, _ = load_model(path, device)
            for layer, activation in layer_activations(snapshot, selection.inputs[:1],
                                                       layers).items():
                maps[layer][epoch] = activation[0]
        for layer in layers:
            figure = plot_evolution(image, maps[layer], layer, f"{name}, epochs 1-{epoch}",
                                    args.max_channels)
            paths.append(write_figure(figure, out / f"evolution_{name}_{layer}.png"))
    return paths


def main(argv=None, written=None, notes=None):
    return run(visualize, get_args_parser().parse_args(argv), written=written, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
