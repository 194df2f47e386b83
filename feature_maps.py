"""Filters, feature maps, dead filters and how features evolve during training.

    python feature_maps.py --dataset shapes --index 0               # everything for test image 0
    python feature_maps.py --dataset mnist --arch simple --show filters
    python feature_maps.py --dataset shapes --show evolution        # needs --save-every-epoch

- ``filters``: the first layer's filters as RGB images (3 input channels) or, for 1 input
  channel, as red/blue heatmaps with the weight written in each cell; deeper layers as a grid
  of per-input-channel kernels (a row per filter, a column per input channel).
- ``maps``: every channel of each chosen layer (``--layers``, default every conv layer) for the
  chosen image, the input beside them (a conv name means its conv-BatchNorm-ReLU output).
- ``dead``: per layer, for each channel the share of ``--num-images`` test images on which it
  is positive somewhere, and the channels never positive (dead filters).
- ``evolution``: from the per-epoch snapshots of ``train_cnn.py --save-every-epoch``, the
  feature maps of the chosen image after each epoch, epochs as columns, a figure per layer.
"""
import sys
from pathlib import Path

import torch
from matplotlib.figure import Figure

from model.architectures import block_end, conv_layer_names, get_layer, layer_names, split_at
from model.checkpoint import load_model, snapshot_path
from model.cli import ArgumentParser, positive_int, run
from model.datasets import load_dataset
from model.engine import iterate_batches
from model.heatmaps import DIVERGING_CMAP, HEATMAP_CMAP, frame, show_image
from model.images import checkpoint_path, method_parser, prepare_method
from model.runtime import save_json, write_figure

VIEWS = ("filters", "maps", "dead", "evolution")


@torch.no_grad()
def layer_activations(model, inputs, layers):
    """One forward pass, returning the activation of each named layer: name -> (N, K, h, w).

    A conv name stands for its block's output (``block_end``).
    """
    ends = {block_end(model, layer): layer for layer in layers}
    last = max(layer_names(model).index(end) for end in ends)
    activations, signal = {}, inputs
    for index, (name, module) in enumerate(model.named_children()):
        signal = module(signal)
        if name in ends:
            activations[ends[name]] = signal
        if index == last:
            break
    return activations


@torch.no_grad()
def dead_filter_report(model, dataset, layers, device, batch_size=256):
    """Per layer, the share of images on which each channel is positive somewhere.

    Returns:
        name -> dict with ``active_share`` (K,) in [0, 1] and ``dead`` (channels never positive).
    """
    active = {layer: 0 for layer in layers}
    for inputs, _ in iterate_batches(dataset, batch_size, device):
        for layer, activation in layer_activations(model, inputs, layers).items():
            active[layer] = active[layer] + (activation.flatten(2).amax(2) > 0).sum(0)
    report = {}
    for layer, counts in active.items():
        share = counts.float().cpu() / len(dataset)
        report[layer] = {"active_share": share, "dead": (share == 0).nonzero()[:, 0].tolist()}
    return report


def weight_display(weights):
    """Weights to [0, 1] around a mid-gray zero, scaled by their largest magnitude."""
    return (0.5 + 0.5 * weights / weights.abs().max().clamp_min(1e-12)).clamp(0, 1)


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
            show_image(axis, weight_display(kernel), f"filter {index}")
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


def plot_kernel_grid(weights, title, max_filters=32, max_inputs=32):
    """Deeper-layer kernels: a row per filter, a column per input channel, one shared scale."""
    weights = weights[:max_filters, :max_inputs]
    rows, columns = weights.shape[:2]
    limit = float(weights.abs().max())
    figure = Figure(figsize=(0.42 * columns + 1.2, 0.42 * rows + 1.0))
    axes = figure.subplots(rows, columns, squeeze=False)
    for row in range(rows):
        for column in range(columns):
            axes[row, column].imshow(weights[row, column].numpy(), cmap=DIVERGING_CMAP,
                                     vmin=-limit, vmax=limit)
            frame(axes[row, column])
        axes[row, 0].set_ylabel(str(row), fontsize=6, rotation=0, ha="right", va="center")
    for column in range(columns):
        axes[0, column].set_title(str(column), fontsize=6)
    figure.suptitle(f"{title} (rows: filters, columns: input channels)")
    return figure


def plot_feature_maps(image, activation, title, columns=8):
    """The input and every channel's map (K, h, w) of one layer, each on its own scale."""
    count = len(activation)
    rows = -(-(count + 1) // columns)
    figure = Figure(figsize=(1.5 * columns, 1.6 * rows + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    show_image(axes.flat[0], image, "input")
    axes.flat[0].axis("on")
    for channel, feature_map in enumerate(activation):
        axis = axes.flat[channel + 1]
        axis.axis("on")
        axis.imshow(feature_map.cpu().numpy(), cmap=HEATMAP_CMAP)
        frame(axis, f"ch {channel}: max {float(feature_map.max()):.2f}")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_dead_report(report, title):
    """A bar per channel: the share of images on which it fires; dead channels in red."""
    figure = Figure(figsize=(10, 1.9 * len(report) + 0.5))
    axes = figure.subplots(len(report), 1, squeeze=False)[:, 0]
    for axis, (layer, entry) in zip(axes, report.items()):
        share = entry["active_share"]
        colors = ["tab:red" if value == 0 else "tab:blue" for value in share.tolist()]
        axis.bar(range(len(share)), share.numpy(), color=colors)
        axis.set(ylim=(0, 1.05), ylabel="share active",
                 title=f"{layer}: {len(entry['dead'])} dead of {len(share)}")
    axes[-1].set_xlabel("channel")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_evolution(image, maps_by_epoch, layer, title, max_channels):
    """Rows: channels (the first ``max_channels``); columns: epochs. Each map on its own scale."""
    epochs = list(maps_by_epoch)
    channels = min(max_channels, maps_by_epoch[epochs[0]].shape[0])
    figure = Figure(figsize=(1.3 * (len(epochs) + 1), 1.3 * channels + 0.8))
    axes = figure.subplots(channels, len(epochs) + 1, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    show_image(axes[0, 0], image, "input")
    axes[0, 0].axis("on")
    for column, epoch in enumerate(epochs, start=1):
        for channel in range(channels):
            axis = axes[channel, column]
            axis.axis("on")
            axis.imshow(maps_by_epoch[epoch][channel].cpu().numpy(), cmap=HEATMAP_CMAP)
            frame(axis, f"epoch {epoch}" if channel == 0 else None)
            if column == 1:
                axis.set_ylabel(f"ch {channel}", fontsize=7)
    figure.suptitle(f"{title}: {layer}")
    figure.tight_layout()
    return figure


def snapshot_epochs(checkpoint):
    """(epoch, path) of every per-epoch snapshot beside ``checkpoint``, in epoch order."""
    folder = snapshot_path(checkpoint, 1).parent
    return sorted((int(path.stem.split("_")[1]), path) for path in folder.glob("epoch_*.pt"))


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[method_parser("feature_maps")])
    parser.add_argument("--show", nargs="+", choices=VIEWS, default=list(VIEWS),
                        help="what to draw (default: all; evolution only where snapshots exist)")
    parser.add_argument("--layers", nargs="+", default=None,
                        help="layers for maps, dead filters and evolution (default: every conv)")
    parser.add_argument("--num-images", type=positive_int, default=1000,
                        help="test images for the dead-filter report (default: 1000)")
    parser.add_argument("--max-channels", type=positive_int, default=16,
                        help="channels shown in the evolution figures (default: 16)")
    return parser


def visualize(args):
    device, model, info, selection = prepare_method(args)
    checkpoint = checkpoint_path(args)
    layers = args.layers or conv_layer_names(model)
    for layer in layers:
        split_at(model, layer)  # feature maps exist only in the convolutional part
    out = Path(args.out)
    image, name = info.denormalize(selection.inputs[:1])[0], selection.names[0]

    if "filters" in args.show:
        convs = conv_layer_names(model)
        first = get_layer(model, convs[0]).weight.detach().cpu()
        write_figure(plot_first_layer(first, f"{convs[0]} filters"),
                     out / f"filters_{convs[0]}.png")
        for layer in convs[1:]:
            weights = get_layer(model, layer).weight.detach().cpu()
            write_figure(plot_kernel_grid(weights, f"{layer} kernels"),
                         out / f"filters_{layer}.png")
    if "maps" in args.show:
        for layer, activation in layer_activations(model, selection.inputs[:1], layers).items():
            figure = plot_feature_maps(image, activation[0], f"{name}: {layer} feature maps")
            write_figure(figure, out / f"maps_{name}_{layer}.png")
    if "dead" in args.show:
        dataset = load_dataset(info.name, "test", args.data_dir).subset(args.num_images)
        report = dead_filter_report(model, dataset, layers, device, args.batch_size)
        title = f"share of {len(dataset)} test images on which each channel fires"
        write_figure(plot_dead_report(report, title), out / "dead_filters.png")
        summary = {layer: {"dead": entry["dead"], "active_share": entry["active_share"].tolist()}
                   for layer, entry in report.items()}
        save_json(summary, out / "dead_filters.json")
        for layer, entry in report.items():
            print(f"{layer}: {len(entry['dead'])} dead channels {entry['dead'] or ''}")
    if "evolution" in args.show:
        snapshots = snapshot_epochs(checkpoint)
        if not snapshots:
            print(f"note: no snapshots in {snapshot_path(checkpoint, 1).parent}; train with "
                  "--save-every-epoch for the evolution figures", file=sys.stderr)
            return
        maps = {layer: {} for layer in layers}
        for epoch, path in snapshots:
            snapshot, _, _ = load_model(path, device)
            for layer, activation in layer_activations(snapshot, selection.inputs[:1],
                                                       layers).items():
                maps[layer][epoch] = activation[0]
        for layer in layers:
            figure = plot_evolution(image, maps[layer], layer, f"{name}, epochs 1-{epoch}",
                                    args.max_channels)
            write_figure(figure, out / f"evolution_{name}_{layer}.png")


def main(argv=None):
    return run(visualize, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
