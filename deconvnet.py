"""DeconvNet projections (Zeiler & Fergus 2014, sec. 2.1), guided backprop and saliency.

    python deconvnet.py --dataset shapes --index 0 --layer conv3 --top 9
    python deconvnet.py --dataset shapes --layer conv2 --channel 5 --whole-map
    python deconvnet.py --dataset mnist --arch simple --layer conv2 --all-channels
    python deconvnet.py --dataset shapes --rule guided          # Springenberg et al. 2015
    python deconvnet.py --dataset shapes --index 0 1 --layer conv2 --save-maps deconvnet.npz

One activation of a layer (the strongest unit of a channel, or its whole map) is kept, every
other activation is set to zero, and the signal goes down the explicit mirror of the network
(``model.units.mirror``): unpooling with the max pools' switches, transposed convolutions,
BatchNorm's scale, and at each ReLU the chosen ``--rule`` (Springenberg et al. 2015, Fig. 1):
deconvnet
relu(R) (Zeiler & Fergus 2014), guided relu(R) [f > 0], saliency R [f > 0] (the gradient).

A conv layer name (``--layer conv3``) means the output of its whole block: conv, BatchNorm and
ReLU, the rectified feature maps the paper projects.
"""
import math
import sys
from pathlib import Path

import torch

from model.attribution import METHODS
from model.attribution.gradients import rule_note
from model.cli.arguments import ArgumentParser, non_negative_int, positive_int
from model.cli.method_inputs import method_parser, prepare_method, save_maps
from model.cli.running import run
from model.cli.targets import resolve_targets
from model.figures.heatmaps import HEATMAP_CMAP, frame, show_image, signed_display
from model.figures.plotting import Figure, Rectangle, write_figure
from model.nets.layers import conv_layer_names
from model.nets.receptive_field import layer_receptive_field
from model.runtime.notes import note
from model.units.mirror import (
    RULES,
    compute_projections,
    layer_activation,
    projection_path,
    projection_rule,
    strongest_channels,
)

# The registered method that sends the class score down by each --rule
# (model.attribution.gradients).
RULE_METHODS = {"deconvnet": "deconvnet", "guided": "guided-backprop", "saliency": "saliency"}
SAVED = ("the class score of --target sent down to the pixels by --rule, one map per image "
         "as the registry's deconvnet, guided-backprop or saliency method gives it (max over "
         "colour channels of its magnitude); method and rule; and per --layer "
         "projections_<layer> (N, J, C, H, W) float32, the J projections the figures show, "
         "and channels_<layer> (N, J) int64, their channels (large with --all-channels)")


def plot_projections(image, projections, activations, channels, boxes, title, columns=3):
    """Paper Fig. 2 style: per channel, its feature map, its projection and the image crop.

    Args:
        image: (C, H, W) input in [0, 1].
        projections: (J, C, H, W); activations: (J, h, w); channels: (J,) indices.
        boxes: per channel the receptive-field box (top, left, bottom, right) of its maximum.
    """
    count = len(channels)
    rows = -(-count // columns)
    figure = Figure(figsize=(columns * 3.6, rows * 1.35 + 0.8))
    axes = figure.subplots(rows, 3 * columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for j in range(count):
        row, col = divmod(j, columns)
        map_axis, projection_axis, crop_axis = axes[row, 3 * col:3 * col + 3]
        top, left, bottom, right = boxes[j]
        activation = activations[j]
        map_axis.imshow(activation.cpu().numpy(), cmap=HEATMAP_CMAP)
        frame(map_axis, f"ch {int(channels[j])}: max {float(activation.max()):.2f}")
        show_image(projection_axis, signed_display(projections[j]), "projection")
        projection_axis.add_patch(Rectangle((left - 0.5, top - 0.5), right - left,
                                            bottom - top, fill=False, edgecolor="lime",
                                            linewidth=1.0))
        show_image(crop_axis, image[:, top:bottom, left:right], "input crop")
        for axis in (map_axis, projection_axis, crop_axis):
            axis.axis("on")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_all_layers(image, layers, title, top=9):
    """Zeiler & Fergus Fig. 2 for one image: the image, then per layer the projections of its
    ``top`` strongest units, each cropped to the unit's receptive field, in a square grid.

    Args:
        image: (C, H, W) in [0, 1].
        layers: list of (label, projections (J, C, H, W), boxes per projection).
    """
    side = math.ceil(math.sqrt(top))
    figure = Figure(figsize=(2.4 + 2.2 * len(layers), 3.0))
    ratios = [side] + ([0.35] + [1] * side) * len(layers)  # a narrow gap before each layer
    grid = figure.add_gridspec(side, len(ratios), width_ratios=ratios, wspace=0.06,
                               hspace=0.06, left=0.01, right=0.99, bottom=0.02, top=0.8)
    show_image(figure.add_subplot(grid[:, 0]), image, "input")
    for number, (label, projections, boxes) in enumerate(layers):
        first_column = 2 + number * (side + 1)
        for j, (projection, (top_, left, bottom, right)) in enumerate(zip(projections, boxes)):
            row, col = divmod(j, side)
            axis = figure.add_subplot(grid[row, first_column + col])
            show_image(axis, signed_display(projection[:, top_:bottom, left:right]))
        figure.add_subplot(grid[0, first_column:first_column + side], frameon=False).set(
            xticks=[], yticks=[], title=label)
    figure.suptitle(title, y=0.99)
    return figure


def maximum_boxes(activations, field, image_size):
    """Receptive-field box of each (J, h, w) map's strongest unit."""
    width = activations.shape[-1]
    positions = activations.flatten(1).argmax(1).tolist()
    return [field.box(*divmod(position, width), image_size) for position in positions]


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[method_parser("deconvnet", maps=SAVED)])
    parser.add_argument("--layer", nargs="+", default=None,
                        help="layers to project from (default: every conv layer)")
    parser.add_argument("--channel", type=non_negative_int, nargs="+", default=None,
                        help="channels to project (default: the --top strongest per image)")
    parser.add_argument("--top", type=positive_int, default=9,
                        help="how many of the strongest channels (default: 9)")
    parser.add_argument("--all-channels", action="store_true",
                        help="project every channel of the layer")
    parser.add_argument("--whole-map", action="store_true",
                        help="project the whole feature map, not only its strongest unit")
    parser.add_argument("--all-layers", action="store_true",
                        help="also one figure per image with the strongest projections of "
                             "every --layer beside it, cropped to their receptive fields "
                             "(Zeiler & Fergus Fig. 2)")
    parser.add_argument("--rule", choices=RULES, default="deconvnet",
                        help="how a ReLU passes the signal down (default: deconvnet)")
    return parser


def explain(args):
    device, model, info, selection = prepare_method(args)
    layers = args.layer or conv_layer_names(model)
    images, written = info.denormalize(selection.inputs), []
    summary = [[] for _ in selection.names]  # per image: (label, projections, boxes) per layer
    saved = {}  # --save-maps: the projections and channels of every layer
    paths = {}  # one note per way of projecting, naming its layers
    for layer in layers:
        paths.setdefault(projection_path(model, layer), []).append(layer)
    for path, named in paths.items():
        note(f"projections of {', '.join(named)} by {path}", stream=sys.stdout)
    if rule_note(model, args.rule):
        note(rule_note(model, args.rule), stream=sys.stdout)
    unpooled = [layer for layer in layers if projection_rule(model, layer) != "deconvnet"]
    if args.rule == "deconvnet" and unpooled:
        note(f"no max pooling below {', '.join(unpooled)}: without switches their "
             "DeconvNet projections are the same for every image (up to scale); --rule "
             "guided shows what the image drives (Springenberg et al. 2015)", stream=sys.stdout)
    for number, layer in enumerate(layers):
        field = layer_receptive_field(model, layer)
        if args.all_channels:
            with torch.no_grad():
                channel_count = layer_activation(model, layer, selection.inputs[:1]).shape[1]
            channels = torch.arange(channel_count).expand(len(images), -1)
        elif args.channel:
            channels = torch.tensor(args.channel).expand(len(images), -1)
        else:
            channels = strongest_channels(model, selection.inputs, layer, args.top)
        projections, activations = compute_projections(model, selection.inputs, layer,
                                                       channels.to(device), args.rule,
                                                       args.whole_map)
        if args.save_maps:
            saved[f"projections_{layer}"] = projections.float().cpu()  # (N, J, C, H, W)
            saved[f"channels_{layer}"] = channels
        for index, name in enumerate(selection.names):
            boxes = maximum_boxes(activations[index], field, info.image_size)
            title = (f"{name}, layer {layer}: {args.rule} projections of "
                     f"{'whole maps' if args.whole_map else 'the strongest unit'} "
                     f"(receptive field {field.size:.0f}px)")
            figure = plot_projections(images[index], projections[index], activations[index],
                                      channels[index], boxes, title)
            path = Path(args.out) / f"{args.rule}_{name}_{layer}.png"
            written.append(write_figure(figure, path))
            label = layer if args.layer else f"conv{number + 1} ({layer})"
            summary[index].append((label, projections[index, :args.top].cpu(),
                                   boxes[:args.top]))
    if args.all_layers:
        for index, name in enumerate(selection.names):
            figure = plot_all_layers(images[index].cpu(), summary[index],
                                     f"{name}: {args.rule} projections of the "
                                     f"{min(args.top, len(summary[index][0][1]))} strongest "
                                     "units per layer (cropped to their receptive fields)",
                                     args.top)
            written.append(write_figure(figure, Path(args.out) /
                                        f"{args.rule}_{name}_all_layers.png"))
    if args.save_maps:
        written.append(save_class_maps(args, model, info, selection, saved))
    return written


def save_class_maps(args, model, info, selection, saved):
    """Write ``--save-maps``: per image the class score of ``--target`` sent down by ``--rule``
    (the registered method), with the projections ``saved`` per layer; returns the path."""
    with torch.no_grad():
        logits = model(selection.inputs)
    targets = resolve_targets(args.target, info, logits, selection.labels)
    method = RULE_METHODS[args.rule]
    maps = METHODS[method](model, selection.inputs, targets)  # (N, H, W)
    return save_maps(args, info, selection, maps, targets, method=method, **saved)


def main(argv=None, written=None, notes=None):
    return run(explain, get_args_parser().parse_args(argv), written=written, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
