"""Images that a class or a filter likes most, found by gradient ascent on the input.

    python gradient_ascent.py --dataset shapes                        # every class, one batch
    python gradient_ascent.py --dataset shapes --layer conv2 --filters 0-7
    python gradient_ascent.py --dataset shapes --layer conv3 --filters 0-15 --neuron
    python gradient_ascent.py --dataset shapes --param fft            # Olah et al. 2017
    python gradient_ascent.py --dataset mnist --arch simple --ablation
    python gradient_ascent.py --dataset mnist --arch vgg --polish 0   # jitter to the end

Class model visualization (Simonyan et al. 2014, sec. 2, Eq. 1): from a zero (or small-noise)
image, maximize S_c(I) - lambda ||I||^2, with S_c the class score before the softmax and I the
normalized input. Filter maximization (Erhan et al. 2009) maximizes the mean activation of a
channel instead (``--neuron``: its centre unit). All classes or filters are optimized together
as one batch (every image is its own problem: BatchNorm runs in eval mode).

Regularizers, each switchable: L2 decay (``--l2``), a random jitter of the image each step
(``--jitter`` pixels), a Gaussian blur every few steps (``--blur-every``, ``--blur-sigma``;
Yosinski et al. 2015), clipping to the dataset's valid pixel range, and total variation
(``--tv``, Mahendran & Vedaldi 2015). Jitter makes the ascent maximize the score averaged over
shifted copies, but the image is scored where it stands, so the last ``--polish`` part of the
steps drops the jitter: they ascend S_c(I) - lambda ||I||^2 of the unshifted image, the blur
still keeping it smooth. ``--param fft`` optimizes a 1/f-scaled Fourier spectrum with
decorrelated colour instead of pixels (Olah et al. 2017), which gives far less high-frequency
noise. ``--ablation`` draws the same classes under none / L2 / jitter / blur / TV / all / fft,
so each regularizer's effect can be seen.
"""
import sys
from dataclasses import replace
from pathlib import Path

import torch

from model.cli.arguments import (
    ArgumentParser,
    fraction,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
)
from model.cli.method_inputs import (
    checkpoint_parser,
    has_test_split,
    load_method_model,
    load_split,
)
from model.cli.running import run
from model.data.datasets import PHOTO_DATASETS, small_images
from model.data.folders import class_mapping, folder_classes
from model.errors import UserError
from model.figures.heatmaps import show_image
from model.figures.plotting import Figure, write_figure
from model.nets.layers import as_feature_maps, get_layer, layer_output
from model.runtime.device import seed_everything
from model.runtime.notes import note
from model.units.activation_search import parse_channels, search_top_activations
from model.units.ascent import (
    INIT_STD,
    MAX_DEFAULT_CLASSES,
    NO_REGULARIZATION,
    Regularizers,
    gradient_ascent,
)


def plot_grid(images, titles, title, columns=8):
    """Optimized images in a grid of at most ``columns`` a row, each with its title (class and
    probability, or filter and activation)."""
    count = len(images)
    rows = -(-count // columns)
    columns = -(-count // rows)  # rows as full as they can be: 10 images in 2 rows of 5
    figure = Figure(figsize=(1.7 * columns, 2.15 * rows + 0.5))  # two title lines per image
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for index in range(count):
        axes.flat[index].axis("on")
        show_image(axes.flat[index], images[index], titles[index])
    figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_ablation(rows, classes, title):
    """A row per regularization setting ({name: (images, probabilities)}), a column per class."""
    names = list(rows)
    columns = len(next(iter(rows.values()))[0])
    figure = Figure(figsize=(1.5 * columns + 0.8, 1.65 * len(names) + 0.6))
    axes = figure.subplots(len(names), columns, squeeze=False)
    for row, name in enumerate(names):
        images, probabilities = rows[name]
        for column in range(columns):
            label = f"{classes[column]}\n" if row == 0 else ""
            show_image(axes[row, column], images[column],
                       f"{label}p = {probabilities[column]:.2f}")
        axes[row, 0].set_ylabel(name, fontsize=10)
    figure.suptitle(title)
    figure.tight_layout()
    return figure


ABLATION = {
    "none": lambda rules: NO_REGULARIZATION,
    "L2": lambda rules: replace(NO_REGULARIZATION, l2=rules.l2 or 1e-3),
    "jitter": lambda rules: replace(NO_REGULARIZATION, jitter=rules.jitter or 2),
    "blur": lambda rules: replace(NO_REGULARIZATION, blur_every=rules.blur_every or 4,
                                  blur_sigma=rules.blur_sigma),
    "TV": lambda rules: replace(NO_REGULARIZATION, tv=rules.tv or 0.05),
    "all": lambda rules: replace(rules, tv=rules.tv or 0.05),
}


def parse_classes(tokens, classes):
    """Class names, indices or ranges (``circle 3 0-2``) -> sorted unique indices."""
    names = {name.lower(): index for index, name in enumerate(classes)}
    chosen = []
    for token in tokens:
        if token.lower() in names:
            chosen.append(names[token.lower()])
        else:
            try:
                chosen.extend(parse_channels([token], len(classes)))
            except UserError:
                raise UserError(f"--classes {token}: unknown class; use indices 0-"
                                f"{len(classes) - 1} or names: {', '.join(classes)}") from None
    return sorted(set(chosen))


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[checkpoint_parser("gradient_ascent")])
    parser.add_argument("--classes", nargs="+", default=None,
                        help="classes to visualize, names, indices or ranges (default: all; "
                             "of a model with more than 10, the classes of --data-dir's "
                             "folders, or 10 spread over the indices)")
    parser.add_argument("--layer", default=None,
                        help="maximize channels of this conv layer instead of classes")
    parser.add_argument("--filters", nargs="+", default=None,
                        help="channels of --layer, e.g. 0-7 12 (default: all)")
    parser.add_argument("--neuron", action="store_true",
                        help="maximize each channel's centre unit, not its mean activation")
    parser.add_argument("--param", choices=("pixel", "fft"), default=None,
                        help="optimize pixels or a 1/f Fourier spectrum (default: pixel up to "
                             "64 px images, fft beyond, as Olah et al. 2017 do at 224 px)")
    parser.add_argument("--steps", type=positive_int, default=256,
                        help="ascent steps (default: 256)")
    parser.add_argument("--lr", type=positive_float, default=None,
                        help="Adam step size (default: 0.05 for pixels, 0.2 for fft, whose "
                             "steps move a spectrum that the sigmoid squashes)")
    parser.add_argument("--polish", type=fraction, default=0.25,
                        help="last fraction of the steps without jitter, so that the image is "
                             "optimized unshifted, as it is scored (default: 0.25)")
    parser.add_argument("--init", choices=tuple(INIT_STD), default=None,
                        help="start image: zero (the mean image), noise (std 0.01) or random "
                             "(std 0.5) (default: zero for classes, random for filters)")
    parser.add_argument("--l2", type=non_negative_float, default=None,
                        help="L2 decay lambda (default: 0.001 for classes in pixels, 0 for "
                             "filters and fft, whose sigmoid bounds the pixels)")
    parser.add_argument("--jitter", type=non_negative_int, default=None,
                        help="random shift in pixels each step (default: 2, or 1/16 of the "
                             "side beyond 64 px; 0 with --neuron, whose one unit sits at a "
                             "fixed place)")
    parser.add_argument("--blur-every", type=non_negative_int, default=None,
                        help="blur every N steps (default: 4 for classes, 0 = off for "
                             "filters, whose fine patterns a blur erases)")
    parser.add_argument("--blur-sigma", type=positive_float, default=0.5,
                        help="sigma of that blur in pixels (default: 0.5)")
    parser.add_argument("--scale", type=fraction, default=None,
                        help="random zoom by up to this fraction each step, e.g. 0.1 "
                             "(default: 0.1 for classes of photos: cifar10, images over "
                             "64 px; else 0 = off)")
    parser.add_argument("--rotate", type=non_negative_float, default=None,
                        help="random rotation by up to this many degrees each step "
                             "(default: 10 for classes of photos: cifar10, images over "
                             "64 px; else 0 = off)")
    parser.add_argument("--tv", type=non_negative_float, default=0.0,
                        help="total-variation weight (default: 0 = off)")
    parser.add_argument("--no-clip", action="store_true",
                        help="do not clip to the dataset's valid pixel range")
    parser.add_argument("--compare-images", type=positive_int, default=None,
                        help="with --layer, compare each filter's image with its best over "
                             "about N test images spread over the split (default: all)")
    parser.add_argument("--ablation", action="store_true",
                        help="also draw the classes under none/L2/jitter/blur/TV/all/fft")
    return parser


def default_classes(count, folder_indices=None):
    """Every class of a small dataset. Of more than ``MAX_DEFAULT_CLASSES`` (ImageNet's 1000):
    the classes of the user's folders (``folder_indices``, the model's indices of
    ``--data-dir``'s class folders: ImageNet weights on Imagenette draw tench, church, ...,
    not classes 0, 100, 200), up to that many; without folders, that many spread evenly over
    the class indices."""
    if count <= MAX_DEFAULT_CLASSES:
        return list(range(count))
    if folder_indices:
        return list(folder_indices)[:MAX_DEFAULT_CLASSES]
    return torch.linspace(0, count - 1, MAX_DEFAULT_CLASSES).round().long().tolist()


def folder_class_indices(args, info):
    """The model's indices of the classes in ``--data-dir``'s class folders, for
    ``--dataset imagefolder``; None without readable folders or a match by name."""
    if info.name != "imagefolder":
        return None
    try:
        names = folder_classes(args.data_dir)
        return class_mapping(names, info.classes, args.data_dir)
    except (UserError, OSError):
        return None


def class_probabilities(model, info, images, classes, device):
    """Softmax probability of ``classes`` (N,) for the [0, 1] ``images`` (N, C, H, W): a list."""
    with torch.no_grad():
        scores = torch.softmax(model(info.normalize(images.to(device))), 1)
    return scores.gather(1, classes[:, None].to(device))[:, 0].tolist()


# Adam's step size per parameterization when --lr is not given: a Fourier image's steps move a
# spectrum that the sigmoid squashes; 0.2 measured on the trained MobileNetV2 (docs/methods.md).
DEFAULT_LR = {"pixel": 0.05, "fft": 0.2}


def step_size(args, param):
    """``--lr``, or the default step size of ``param``."""
    return args.lr if args.lr is not None else DEFAULT_LR[param]


def visualize_classes(args, model, info, rules, options, device):
    """Class model visualization: one image per class of ``--classes`` (and the ablation).

    Returns:
        the paths written: the class grid, then the ablation figure with ``--ablation``.
    """
    out = Path(args.out)
    classes = torch.tensor(parse_classes(args.classes, info.classes) if args.classes
                           else default_classes(len(info.classes),
                                                folder_class_indices(args, info)))
    images, _ = gradient_ascent(model, info, classes, param=args.param, regularizers=rules,
                                lr=step_size(args, args.param), progress=True, **options)
    probabilities = class_probabilities(model, info, images, classes, device)
    titles = [f"{info.classes[c]}\np = {p:.3f}" for c, p in zip(classes.tolist(), probabilities)]
    figure = plot_grid(images.cpu(), titles, f"class model visualization ({args.param}, "
                                             f"{args.steps} steps)")
    paths = [write_figure(figure, out / f"{info.name}_classes_{args.param}.png")]
    for c, p in zip(classes.tolist(), probabilities):
        print(f"class {info.classes[c]}: final probability {p:.4f}")
    if args.ablation:
        rows = {}
        for name, make in ABLATION.items():
            images, _ = gradient_ascent(model, info, classes, regularizers=make(rules),
                                        lr=step_size(args, "pixel"), **options)
            rows[name] = (images.cpu(), class_probabilities(model, info, images, classes, device))
        images, _ = gradient_ascent(model, info, classes, param="fft", regularizers=rules,
                                    lr=step_size(args, "fft"), **options)
        rows["fft"] = (images.cpu(), class_probabilities(model, info, images, classes, device))
        names = [info.classes[c] for c in classes.tolist()]
        figure = plot_ablation(rows, names, "the same classes and seed under each "
                                            "regularization")
        paths.append(write_figure(figure, out / f"{info.name}_ablation.png"))
    return paths


def visualize_channels(args, model, info, rules, options, device):
    """Filter maximization (Erhan et al. 2009): one image per channel of ``--layer``, each
    compared with the same statistic's best over the real test images.

    Returns:
        the paths written: the grid of the channels' images.
    """
    get_layer(model, args.layer)
    probe = torch.zeros(1, info.channels, info.image_size, info.image_size, device=device)
    with torch.no_grad():
        count = as_feature_maps(layer_output(model, args.layer, probe), model,
                                args.layer).shape[1]
    units = torch.tensor(parse_channels(args.filters, count, "--filters") if args.filters
                         else range(count))
    images, reached = gradient_ascent(model, info, units, layer=args.layer,
                                      neuron=args.neuron, param=args.param,
                                      regularizers=rules, lr=step_size(args, args.param),
                                      progress=True, **options)
    kind = "centre unit" if args.neuron else "mean activation"
    titles = [f"filter {int(u)}\n{float(v):.2f}" for u, v in zip(units, reached)]
    figure = plot_grid(images.cpu(), titles, f"{args.layer}: images maximizing each "
                                              f"filter's {kind} ({args.param})")
    paths = [write_figure(figure, Path(args.out) / f"{info.name}_{args.layer}_filters.png")]
    # Compare with the same statistic's best over the real test images: the mean
    # activation with the highest mean, or for --neuron the highest single activation
    # (taken anywhere in the map: jitter moves the pattern a few pixels off the centre).
    with torch.no_grad():
        maps = layer_output(model, args.layer, info.normalize(images.to(device)))[
            torch.arange(len(units)), units.to(device)]  # (N, h, w)
    achieved = maps.flatten(1).amax(1) if args.neuron else maps.mean((1, 2))
    if not has_test_split(info):
        note(f"no comparison with real images: there is no {info.name} test split "
             "here")
        return paths
    split = load_split(info, "test", args)
    test_set = split.spread(args.compare_images)
    if test_set is not split:
        note(f"filters compared with {len(test_set)} of the {len(split)} test images, an "
             "even spread (--compare-images)")
    scan = search_top_activations(model, test_set, args.layer, k=1,
                                  score="max" if args.neuron else "mean", device=device)
    best = (scan.channel_max if args.neuron else scan.values[:, 0])[units.to(device)]
    ratios = achieved / best.clamp_min(1e-12)
    for unit, value, ratio in zip(units.tolist(), achieved.tolist(), ratios.tolist()):
        print(f"{args.layer} filter {unit}: {kind} reached {value:.3f}, "
              f"{ratio:.2f} x its best on the test split")
    print(f"{int((ratios >= 1).sum())} of {len(units)} filters reach at least their "
          f"test-split maximum")
    return paths


def visualize(args):
    """Resolve the mode's defaults, then draw the classes or the channels of ``--layer``.

    Returns:
        the paths written, in order (see :func:`visualize_classes`, :func:`visualize_channels`).
    """
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    model.requires_grad_(False)  # only the image is optimized
    # Blur and L2 make class images readable but erase the fine patterns early filters
    # respond to (conv1 of shapes/vgg: 0 of 16 filters reach their test-split maximum with
    # them, 15 of 16 without), so filter maximization leaves them off unless asked.
    filters = args.layer is not None
    if not filters and (args.filters or args.neuron):
        raise UserError("--filters and --neuron need --layer, the conv layer whose channels "
                        "to maximize")
    if args.blur_every is None:
        args.blur_every = 0 if filters else 4
    if args.init is None:
        args.init = "random" if filters else "zero"
    large = not small_images(info.image_size)  # photos (Olah et al. 2017's setting)
    if args.param is None:
        args.param = "fft" if large else "pixel"
    if args.l2 is None:
        args.l2 = 0.0 if filters or args.param == "fft" else 1e-3
    if args.jitter is None:
        args.jitter = 0 if args.neuron else (info.image_size // 16 if large else 2)
    natural = (info.name in PHOTO_DATASETS or large) and not filters
    if args.scale is None:
        args.scale = 0.1 if natural else 0.0
    if args.rotate is None:
        args.rotate = 10.0 if natural else 0.0
    rules = Regularizers(l2=args.l2, jitter=args.jitter, blur_every=args.blur_every,
                         blur_sigma=args.blur_sigma, tv=args.tv, clip=not args.no_clip,
                         scale=args.scale, rotate=args.rotate)
    options = dict(steps=args.steps, polish=args.polish, init=args.init, seed=args.seed)
    if filters:
        return visualize_channels(args, model, info, rules, options, device)
    return visualize_classes(args, model, info, rules, options, device)


def main(argv=None, written=None, notes=None):
    return run(visualize, get_args_parser().parse_args(argv), written=written, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
