"""Which dataset images excite a unit most? (Zeiler & Fergus 2014, Fig. 2)

    python max_activation_search.py --dataset shapes --layer conv3 --k 9
    python max_activation_search.py --dataset shapes --layer conv2 --channels 0-7 --project
    python max_activation_search.py --dataset shapes --layer fc          # the classes
    python max_activation_search.py --dataset mnist --arch simple --layer conv1 --split train

One pass over a split, in batches and without gradients, keeps for every channel of the layer
the ``--k`` images with the highest score, the channel's maximum over positions (``--score
mean`` for its mean), and the position of that maximum. Each batch's top-k is merged into the
running top-k on tensors, so memory is channels x k whatever the number of images. Ties are
broken by the lower image index (a stable merge), exactly as a full sort would. The scan is
``model.units.activation_search``; this script draws and saves its result. Under torchrun
(``torchrun --nproc_per_node N max_activation_search.py ...``) each process scans whole batches
and the top-k are merged exactly: the same JSON and figures as one process.

The receptive field of the maximum is computed from the layer stack
(``model.nets.receptive_field``) and drawn as a box; ``--project`` adds the projection of each
top activation to the overview (a row per unit: its projections, then its image patches, as
Zeiler & Fergus's Fig. 2) and to the channel figures: by the DeconvNet, or by guided
backpropagation where no max pool lies below the layer (``model.units.mirror``). A JSON file
lists image indices, values, positions and the dead channels
(never positive on the scan).
"""
import sys
from pathlib import Path

import torch
import torch.nn as nn

from model.cli.arguments import ArgumentParser, positive_int
from model.cli.method_inputs import (
    checkpoint_parser,
    checkpoint_path,
    has_test_split,
    load_method_model,
    load_split,
)
from model.cli.running import run
from model.errors import UserError
from model.figures.heatmaps import frame, show_image, signed_display
from model.figures.plotting import Figure, Rectangle, write_figure
from model.nets.layers import conv_layer_names, get_layer
from model.nets.receptive_field import layer_receptive_field
from model.runtime import distributed
from model.runtime.device import seed_everything
from model.runtime.files import save_json
from model.runtime.notes import note
from model.units.activation_search import (
    layer_function,
    parse_channels,
    ranking_clip,
    search_top_activations,
)
from model.units.mirror import compute_projections, projection_path, projection_rule

MAX_SHOWN = 16  # images per channel in the figures: a figure of k subplots grows with k
MAX_OVERVIEW = 32  # channels in the default overview: 512 rows would be 55,000 px tall
# How --project sends a unit down (model.units.mirror.projection_rule), for the note and the
# figure's row label.
RULE_NOTES = {"deconvnet": "the DeconvNet rule (Zeiler & Fergus 2014)",
              "guided": "guided backpropagation (Springenberg et al. 2015): there is no max "
                        "pooling below it, and without switches the DeconvNet rule would "
                        "send every image to the same pattern"}
RULE_LABELS = {"deconvnet": "DeconvNet projection", "guided": "guided backprop"}
# A projection's few strongest pixels would leave the rest mid-grey at full scale; the display
# saturates the top 0.5% instead.
PROJECTION_QUANTILE = 0.995


def unit_boxes(result, channels, field, image_size):
    """Receptive-field box (top, left, bottom, right) of every kept maximum: [channel][rank]."""
    if field is None:  # class scores see the whole image
        return [[(0, 0, image_size, image_size)] * result.k for _ in channels]
    return [[field.box(int(row), int(col), image_size) for row, col in result.positions[c]]
            for c in channels]


def plot_channel(images, values, indices, boxes, title, projections=None,
                 projection_label="projection"):
    """One channel: the k images with the receptive field boxed, then the k crops (and the
    projections of the same activations, rows labelled ``projection_label``); at most
    ``MAX_SHOWN`` of them."""
    k = min(len(images), MAX_SHOWN)
    rows = 2 if projections is None else 3
    figure = Figure(figsize=(1.45 * k, 1.6 * rows + 0.5))
    axes = figure.subplots(rows, k, squeeze=False)
    for rank in range(k):
        top, left, bottom, right = boxes[rank]
        show_image(axes[0, rank], images[rank], f"#{indices[rank]}\n{values[rank]:.2f}")
        axes[0, rank].add_patch(Rectangle((left - 0.5, top - 0.5), right - left, bottom - top,
                                          fill=False, edgecolor="lime", linewidth=1.2))
        show_image(axes[1, rank], images[rank][:, top:bottom, left:right])
        if projections is not None:
            show_image(axes[2, rank], projections[rank][:, top:bottom, left:right])
    axes[0, 0].set_ylabel("image", fontsize=9)
    axes[1, 0].set_ylabel("receptive field", fontsize=9)
    if projections is not None:
        axes[2, 0].set_ylabel(projection_label, fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_overview(crops, channel_labels, title, projection_crops=None,
                  projection_label="projections"):
    """A row per channel of its top-k receptive-field crops ([channel][rank] -> (C, h, w));
    with ``projection_crops`` (the same layout) each row starts with the projections of the
    same activations: Zeiler & Fergus 2014's Fig. 2, a unit a row instead of a 3 x 3 block."""
    rows, k = len(crops), min(len(crops[0]), MAX_SHOWN)
    blocks = [crops] if projection_crops is None else [projection_crops, crops]
    columns = len(blocks) * k + len(blocks) - 1  # an empty column between the blocks
    figure = Figure(figsize=(0.9 * columns + 1.2, 0.9 * rows + 0.8))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for number, block in enumerate(blocks):
        first = number * (k + 1)
        for row in range(rows):
            for rank in range(k):
                axes[row, first + rank].axis("on")
                show_image(axes[row, first + rank], block[row][rank])
    for row in range(rows):
        frame(axes[row, 0])
        axes[row, 0].set_ylabel(channel_labels[row], fontsize=8, rotation=0, ha="right",
                                va="center")
    figure.suptitle(title)
    header = 0.3 / figure.get_figheight()  # room for the blocks' headers, in figure heights
    figure.tight_layout(rect=(0, 0, 1, 1 - header) if len(blocks) > 1 else None)
    if len(blocks) > 1:
        # Above the blocks' cells, not over one crop: a crop narrower than its cell shrinks its
        # axes, and an axes title would sit low, over the taller crops beside it.
        top = max(axis.get_position(original=True).y1 for axis in axes[0])
        for number, label in enumerate([projection_label, "images"]):
            left = axes[0, number * (k + 1)].get_position(original=True).x0
            right = axes[0, number * (k + 1) + k - 1].get_position(original=True).x1
            figure.text((left + right) / 2, top + header / 4, label, ha="center", va="bottom",
                        fontsize=9)
    return figure


def project_top(model, info, layer, channel, images, rule, device):
    """The projections (k, C, H, W) in [0, 1] of ``channel``'s top activation in each of its
    top images (uint8 (k, C, H, W)), sent down by ``rule`` and shown signed."""
    inputs = info.normalize(images.to(device))
    channels = torch.full((len(images), 1), channel, device=device)
    projections = compute_projections(model, inputs, layer, channels, rule)[0][:, 0]
    return torch.stack([signed_display(p, PROJECTION_QUANTILE) for p in projections]).cpu()


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[checkpoint_parser("max_activation_search")])
    parser.add_argument("--layer", default=None,
                        help="conv-part layer, or fc for the classes (default: the last conv)")
    parser.add_argument("--channels", nargs="+", default=None,
                        help="channels to draw, e.g. 0-7 12: the overview's rows and a "
                             f"detailed figure each (default: up to {MAX_OVERVIEW} in the "
                             f"overview, for larger layers the {MAX_OVERVIEW} with the highest "
                             "maximum; detailed figures only for layers of <= 16 channels)")
    parser.add_argument("--k", type=positive_int, default=9,
                        help="images kept per channel (default: 9)")
    parser.add_argument("--score", choices=("max", "mean"), default="max",
                        help="rank images by the channel's maximum or mean (default: max)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="split to scan (default: test)")
    parser.add_argument("--project", action="store_true",
                        help="add the projection of each top activation to the overview "
                             "(Zeiler & Fergus's Fig. 2) and the channel figures: by the "
                             "DeconvNet, or by guided backpropagation where no max pool lies "
                             "below the layer")
    parser.add_argument("--num-images", type=positive_int, default=None,
                        help="scan about N images spread evenly over the split, every class "
                             "(default: all; the report's plans set it when time is short)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="images per forward pass (default: 256)")
    return parser


def overview_channels(result):
    """The channels the overview shows by default: all of a layer of up to
    ``MAX_OVERVIEW``, else the ``MAX_OVERVIEW`` with the highest maximum (in channel order),
    so that the figure of a 512-channel layer stays readable; a note says so."""
    count = len(result.channel_max)
    if count <= MAX_OVERVIEW:
        return list(range(count))
    strongest = torch.topk(result.channel_max, MAX_OVERVIEW).indices.sort().values.tolist()
    note(f"the overview shows the {MAX_OVERVIEW} of the {count} channels with the "
         "highest maximum; --channels picks others")
    return strongest


def check_arguments(args, model, layer, dataset, device):
    """Refuse a bad ``--layer``, ``--channels`` or ``--k`` before the scan, not after it."""
    if args.k > len(dataset):
        raise UserError(f"--k {args.k} is more than the {len(dataset)} images of the "
                        f"{args.split} split")
    if args.k > MAX_SHOWN:
        note(f"the figures show the top {MAX_SHOWN} of the {args.k} images per channel; "
             "the JSON has all")
    with torch.no_grad():
        first = dataset.info.normalize(dataset.images[:1].to(device))
        probe = layer_function(model, layer)(first)
    if args.channels:
        parse_channels(args.channels, probe.shape[1])


def search(args):
    """Scan the split, then write the JSON report, the overview and the per-channel figures.

    Returns:
        the paths written, in order: JSON, overview, then one figure per detailed channel.
    """
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    layer = args.layer or conv_layer_names(model)[-1]
    if not has_test_split(info):
        raise UserError(f"there is no {info.name} dataset here to scan: give the --dataset "
                        "the weights were trained on")
    split = load_split(info, args.split, args)
    dataset = split.spread(args.num_images)
    # the spread's i-th image is the split's (stride * i)-th: indices are reported in the split
    stride = 1 if dataset is split else len(split) // args.num_images
    if dataset is not split:
        note(f"scanned {len(dataset)} of the {len(split)} {args.split} images, an even spread "
             "(--num-images)")
    check_arguments(args, model, layer, dataset, device)
    result = search_top_activations(model, dataset, layer, args.k, args.score,
                                    args.batch_size, device, progress=True)
    if not distributed.current().main:
        return []  # rank 0 writes the same result
    channel_count = result.values.shape[0]
    clip = ranking_clip(model, layer, args.score)  # ReLU6: ranked by its pre-activation
    measure = args.score if clip is None else f"max before {type(get_layer(model, clip)).__name__}"
    is_classes = isinstance(get_layer(model, layer), nn.Linear)
    field = None if is_classes else layer_receptive_field(model, layer)
    labels = (list(info.classes) if is_classes
              else [f"ch {c}" for c in range(channel_count)])
    all_channels = list(range(channel_count))
    boxes = unit_boxes(result, all_channels, field, info.image_size)
    out = Path(args.out)
    stem = f"{info.name}_{layer}"

    report = {"checkpoint": args.weights or str(checkpoint_path(args)), "layer": layer,
              "split": args.split,
              "k": args.k, "score": measure, "images_scanned": len(dataset),
              "receptive_field": None if field is None else field.size,
              "dead_channels": result.dead_channels(),
              "channels": {labels[c]: {"indices": (stride * result.indices[c]).tolist(),
                                       "values": result.values[c].tolist(),
                                       "positions": result.positions[c].tolist(),
                                       "max": float(result.channel_max[c])}
                           for c in all_channels}}
    paths = [save_json(report, out / f"{stem}_top{args.k}.json")]
    print(f"wrote {paths[-1]}; dead channels: "
          f"{report['dead_channels'] or 'none'}")

    chosen = (parse_channels(args.channels, channel_count) if args.channels
              else overview_channels(result))
    # Each channel's top images, read once (decoding them is the cost for an image folder).
    top_images = {c: dataset.images[result.indices[c]] for c in chosen}
    images_of = lambda c: top_images[c].float() / 255  # noqa: E731
    crops = [[image[:, t:b, l:r] for image, (t, l, b, r) in zip(images_of(c), boxes[c])]
             for c in chosen]
    projecting = args.project and not is_classes
    rule = projection_rule(model, layer) if projecting else None
    if projecting:
        note(f"projections of {layer} by {projection_path(model, layer)}, "
             f"{RULE_NOTES[rule]}", stream=sys.stdout)
    # Each chosen channel's top activations sent down, shown over their receptive field.
    projections = {c: project_top(model, info, layer, c, top_images[c], rule, device)
                   for c in chosen} if projecting else {}
    projection_crops = [[p[:, t:b, l:r] for p, (t, l, b, r) in zip(projections[c], boxes[c])]
                        for c in chosen] if projecting else None
    title = f"{info.name} {layer}: top {args.k} {args.split} images per channel ({measure})"
    paths.append(write_figure(plot_overview(crops, [labels[c] for c in chosen], title,
                                            projection_crops, RULE_LABELS.get(rule)),
                              out / f"{stem}_overview.png"))

    detailed = chosen if args.channels or channel_count <= 16 else []
    for c in detailed:
        figure = plot_channel(images_of(c), result.values[c].tolist(),
                              (stride * result.indices[c]).tolist(), boxes[c],
                              f"{info.name} {layer} {labels[c]}: top {args.k} {args.split} "
                              f"images ({measure})", projections.get(c), RULE_LABELS.get(rule))
        paths.append(write_figure(figure, out / f"{stem}_channel{c:03d}.png"))
    return paths


def main(argv=None, written=None, notes=None):
    return run(search, get_args_parser().parse_args(argv), written=written,
               notes=notes, several_processes=True)


if __name__ == "__main__":
    sys.exit(main())
