"""Which dataset images excite a unit most? (Zeiler & Fergus 2014, Fig. 2)

    python max_activation_search.py --dataset shapes --layer conv3 --k 9
    python max_activation_search.py --dataset shapes --layer conv2 --channels 0-7 --project
    python max_activation_search.py --dataset shapes --layer fc          # the classes
    python max_activation_search.py --dataset mnist --arch simple --layer conv1 --split train

One pass over a split, in batches and without gradients, keeps for every channel of the layer
the ``--k`` images with the highest score, the channel's maximum over positions (``--score
mean`` for its mean), and the position of that maximum. Each batch's top-k is merged into the
running top-k on tensors, so memory is channels x k whatever the number of images. Ties are
broken by the lower image index (a stable merge), exactly as a full sort would.

The receptive field of the maximum is computed from the layer stack (``model.receptive_field``)
and drawn as a box; ``--project`` adds the DeconvNet projection of each top activation
(deconvnet.py's core). A JSON file lists image indices, values, positions and the dead channels
(never positive on the scan).
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

from deconvnet import compute_projections, projection_display
from model.architectures import conv_layer_names, get_layer, split_at
from model.cli import ArgumentParser, positive_int, run
from model.datasets import load_dataset
from model.engine import iterate_batches
from model.errors import UserError
from model.heatmaps import frame, show_image
from model.receptive_field import receptive_field
from model.images import checkpoint_parser, checkpoint_path, load_method_model
from model.plotting import Figure, Rectangle
from model.runtime import save_json, seed_everything, write_figure

MAX_SHOWN = 16  # images per channel in the figures: a figure of k subplots grows with k


@dataclass
class TopActivations:
    """The running result of a scan, for K channels.

    Attributes:
        values: (K, k) scores, best first (-inf where fewer than k images were seen).
        indices: (K, k) dataset indices of those images (-1 where none).
        positions: (K, k, 2) (row, col) of each channel's maximum in those images (filled
            by :meth:`locate_maxima` after the scan).
        channel_max: (K,) the highest activation of each channel over all images seen.
    """

    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    channel_max: torch.Tensor

    @classmethod
    def empty(cls, channels, k, device, dtype=torch.float32):
        return cls(torch.full((channels, k), -torch.inf, dtype=dtype, device=device),
                   torch.full((channels, k), -1, dtype=torch.int64, device=device),
                   torch.zeros(channels, k, 2, dtype=torch.int64, device=device),
                   torch.full((channels,), -torch.inf, dtype=dtype, device=device))

    def merge(self, activations, first_index, score="max"):
        """Fold one batch of activations (B, K, h, w), dataset indices first_index.., in.

        Running entries come first in the concatenation and the sort is stable, so among
        equal scores the lower dataset index wins, as in a full stable sort.
        """
        flat = activations.flatten(2)  # (B, K, hw)
        peak = flat.amax(2)  # (B, K)
        scores = (peak if score == "max" else flat.mean(2)).T  # (K, B)
        self.channel_max = torch.maximum(self.channel_max, peak.amax(0))
        # A batch image can enter a channel's top k only by beating its current k-th score:
        # on a tie the running entry, with the lower dataset index, stays ahead. After the
        # first batches few images qualify, so the sorts below run on those alone.
        candidates = (scores > self.values[:, -1:]).any(0).nonzero()[:, 0]  # ascending
        if len(candidates) == 0:
            return
        keep = min(self.k, len(candidates))
        ranked = torch.sort(scores[:, candidates], dim=1, descending=True, stable=True)
        best = candidates[ranked.indices[:, :keep]]  # (K, keep) batch positions
        values = torch.cat([self.values, scores.gather(1, best)], dim=1)  # (K, k + keep)
        indices = torch.cat([self.indices, best + first_index], dim=1)
        order = torch.sort(values, dim=1, descending=True, stable=True).indices[:, :self.k]
        self.values = values.gather(1, order)
        self.indices = indices.gather(1, order)

    def locate_maxima(self, function, dataset, device):
        """Fill ``positions``: one more forward pass over the (at most K x k) kept images.

        Finding the argmax only for the images that end up kept keeps it out of the scan.
        """
        kept = self.indices.clamp_min(0)  # (K, k); -1 (no image) reads image 0, unused
        unique, inverse = torch.unique(kept, return_inverse=True)
        activations = function(dataset.info.normalize(dataset.images[unique.cpu()].to(device)))
        width = activations.shape[-1]
        channel = torch.arange(kept.shape[0], device=activations.device)[:, None]
        where = activations.flatten(2)[inverse, channel].argmax(2)  # (K, k): first maximum
        self.positions = torch.stack([where // width, where % width], dim=2)

    @property
    def k(self):
        return self.values.shape[1]

    def dead_channels(self):
        """Channels that were never positive on the scan."""
        return (self.channel_max <= 0).nonzero()[:, 0].tolist()


def layer_function(model, layer):
    """The function from inputs to the layer's activations as (N, K, h, w).

    ``fc`` (the last Linear layer) gives the class scores as (N, classes, 1, 1). The inputs
    are cast to the model's dtype (normalized images are float32; a test net may be float64).
    """
    dtype = next(model.parameters()).dtype
    if isinstance(get_layer(model, layer), nn.Linear):
        if layer != list(dict(model.named_children()))[-1]:
            raise UserError(f"--layer {layer}: only the final Linear layer (the classes) or a "
                            "layer of the convolutional part can be searched")
        return lambda inputs: model(inputs.to(dtype))[:, :, None, None]
    body = split_at(model, layer)[0]
    return lambda inputs: body(inputs.to(dtype))


@torch.no_grad()
def search_top_activations(model, dataset, layer, k=9, score="max", batch_size=256,
                           device="cpu", progress=False):
    """Scan ``dataset`` once and keep every channel's top-k images (see :class:`TopActivations`).

    Args:
        model: a net of the ``model`` package in eval mode.
        dataset: an :class:`~model.datasets.ImageDataset`.
        layer: a conv-part layer name, or the final Linear layer's name for classes.
        k: images kept per channel; score: ``max`` or ``mean`` over positions.

    Returns:
        :class:`TopActivations`; memory stays O(channels x k) whatever ``len(dataset)``.
    """
    function = layer_function(model, layer)
    result = None
    seen = 0
    batches = iterate_batches(dataset, batch_size, device)
    for inputs, _ in tqdm(batches, total=-(-len(dataset) // batch_size), disable=not progress,
                          desc=f"scanning {layer}", unit="batch"):
        activations = function(inputs)
        if result is None:
            result = TopActivations.empty(activations.shape[1], k, activations.device,
                                          activations.dtype)
        result.merge(activations, seen, score)
        seen += len(inputs)
    result.locate_maxima(function, dataset, device)
    return result


def parse_channels(tokens, count, flag="--channels"):
    """``["0-7", "12"]`` -> [0, ..., 7, 12], checked against ``count`` channels of ``flag``."""
    channels = []
    for token in tokens:
        try:
            low, _, high = token.partition("-")
            low, high = int(low), int(high or low)
        except ValueError:
            raise UserError(f"{flag} {token}: use indices and ranges like 0-7 12") from None
        if high < low:
            raise UserError(f"{flag} {token}: an empty range; write it low-high")
        channels.extend(range(low, high + 1))
    bad = [c for c in channels if not 0 <= c < count]
    if bad:
        raise UserError(f"{flag} {bad[0]} is out of range: the layer has {count} channels "
                        f"(0-{count - 1})")
    return channels


def unit_boxes(result, channels, field, image_size):
    """Receptive-field box (top, left, bottom, right) of every kept maximum: [channel][rank]."""
    if field is None:  # class scores see the whole image
        return [[(0, 0, image_size, image_size)] * result.k for _ in channels]
    return [[field.box(int(row), int(col), image_size) for row, col in result.positions[c]]
            for c in channels]


def plot_channel(images, values, indices, boxes, title, projections=None):
    """One channel: the k images with the receptive field boxed, then the k crops (and the
    DeconvNet projections of the same activations); at most ``MAX_SHOWN`` of them."""
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
        axes[2, 0].set_ylabel("projection", fontsize=9)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_overview(crops, channel_labels, title):
    """A row per channel of its top-k receptive-field crops ([channel][rank] -> (C, h, w))."""
    rows, k = len(crops), min(len(crops[0]), MAX_SHOWN)
    figure = Figure(figsize=(0.9 * k + 1.2, 0.9 * rows + 0.6))
    axes = figure.subplots(rows, k, squeeze=False)
    for row in range(rows):
        for rank in range(k):
            show_image(axes[row, rank], crops[row][rank])
        frame(axes[row, 0])
        axes[row, 0].set_ylabel(channel_labels[row], fontsize=8, rotation=0, ha="right",
                                va="center")
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[checkpoint_parser("max_activation_search")])
    parser.add_argument("--layer", default=None,
                        help="conv-part layer, or fc for the classes (default: the last conv)")
    parser.add_argument("--channels", nargs="+", default=None,
                        help="channels to draw, e.g. 0-7 12: the overview's rows and a "
                             "detailed figure each (default: all in the overview, detailed "
                             "figures only for layers of <= 16 channels)")
    parser.add_argument("--k", type=positive_int, default=9,
                        help="images kept per channel (default: 9)")
    parser.add_argument("--score", choices=("max", "mean"), default="max",
                        help="rank images by the channel's maximum or mean (default: max)")
    parser.add_argument("--split", choices=("test", "train"), default="test",
                        help="split to scan (default: test)")
    parser.add_argument("--project", action="store_true",
                        help="add the DeconvNet projection of each top activation")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="images per forward pass (default: 256)")
    return parser


def check_arguments(args, model, layer, dataset, device):
    """Refuse a bad ``--layer``, ``--channels`` or ``--k`` before the scan, not after it."""
    if args.k > len(dataset):
        raise UserError(f"--k {args.k} is more than the {len(dataset)} images of the "
                        f"{args.split} split")
    if args.k > MAX_SHOWN:
        print(f"note: the figures show the top {MAX_SHOWN} of the {args.k} images per channel; "
              "the JSON has all", file=sys.stderr)
    with torch.no_grad():
        first = dataset.info.normalize(dataset.images[:1].to(device))
        probe = layer_function(model, layer)(first)
    if args.channels:
        parse_channels(args.channels, probe.shape[1])


def search(args):
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    layer = args.layer or conv_layer_names(model)[-1]
    dataset = load_dataset(info.name, args.split, args.data_dir)
    check_arguments(args, model, layer, dataset, device)
    result = search_top_activations(model, dataset, layer, args.k, args.score,
                                    args.batch_size, device, progress=True)
    channel_count = result.values.shape[0]
    is_classes = isinstance(get_layer(model, layer), nn.Linear)
    field = None if is_classes else receptive_field(split_at(model, layer)[0])
    labels = (list(info.classes) if is_classes
              else [f"ch {c}" for c in range(channel_count)])
    all_channels = list(range(channel_count))
    boxes = unit_boxes(result, all_channels, field, info.image_size)
    out = Path(args.out)
    stem = f"{info.name}_{layer}"

    report = {"checkpoint": str(checkpoint_path(args)), "layer": layer, "split": args.split,
              "k": args.k, "score": args.score, "images_scanned": len(dataset),
              "receptive_field": None if field is None else field.size,
              "dead_channels": result.dead_channels(),
              "channels": {labels[c]: {"indices": result.indices[c].tolist(),
                                       "values": result.values[c].tolist(),
                                       "positions": result.positions[c].tolist(),
                                       "max": float(result.channel_max[c])}
                           for c in all_channels}}
    save_json(report, out / f"{stem}_top{args.k}.json")
    print(f"wrote {out / f'{stem}_top{args.k}.json'}; dead channels: "
          f"{report['dead_channels'] or 'none'}")

    chosen = parse_channels(args.channels, channel_count) if args.channels else all_channels
    images_of = lambda c: dataset.images[result.indices[c]].float() / 255  # noqa: E731
    crops = [[images_of(c)[rank][:, t:b, l:r] for rank, (t, l, b, r) in enumerate(boxes[c])]
             for c in chosen]
    title = f"{info.name} {layer}: top {args.k} {args.split} images per channel ({args.score})"
    write_figure(plot_overview(crops, [labels[c] for c in chosen], title),
                 out / f"{stem}_overview.png")

    detailed = chosen if args.channels or channel_count <= 16 else []
    for c in detailed:
        projections = None
        if args.project and not is_classes:
            inputs = info.normalize(dataset.images[result.indices[c]].to(device))
            channel = torch.full((args.k, 1), c, device=device)
            projections = compute_projections(model, inputs, layer, channel)[0][:, 0]
            projections = torch.stack([projection_display(p) for p in projections]).cpu()
        figure = plot_channel(images_of(c), result.values[c].tolist(),
                              result.indices[c].tolist(), boxes[c],
                              f"{info.name} {layer} {labels[c]}: top {args.k} {args.split} "
                              f"images", projections)
        write_figure(figure, out / f"{stem}_channel{c:03d}.png")


def main(argv=None):
    return run(search, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
