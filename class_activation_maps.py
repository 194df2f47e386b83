"""Class activation maps: where in the image the evidence for a class lies.

    python class_activation_maps.py --dataset shapes --index 0 1 2 3
    python class_activation_maps.py --dataset shapes --method gradcam scorecam --layer conv3
    python class_activation_maps.py --dataset mnist --arch simple --method gradcam --smooth 16
    python class_activation_maps.py --dataset shapes --method gradcam --aug-smooth --eigen-smooth
    python class_activation_maps.py --dataset shapes --method gradcam layercam --counterfactual
    python class_activation_maps.py --image cat.png --dataset cifar10 --target cat
    python class_activation_maps.py --dataset shapes --method integrated-gradients saliency
    python class_activation_maps.py --dataset shapes --method gradcam --save-maps gradcam.npz

Every method of the CAM family (``model.attribution.cam``: CAM, Grad-CAM, Grad-CAM++, XGrad-CAM,
HiResCAM, LayerCAM, guided Grad-CAM, Score-CAM, faster Score-CAM, Ablation-CAM, Eigen-CAM)
turns the feature maps A_k of one layer (``--layer``, default the last conv layer) into a map,
by default all of them side by side. ``--method`` takes any registered attribution method
(``python -c "from model.attribution import METHODS; print(list(METHODS))"``): occlusion,
saliency, guided-backprop, deconvnet, integrated-gradients, input-x-gradient, random too.

y^c is the class score before the softmax. Maps are upsampled to the input (bilinear, or
``--upsample nearest`` for the raw cells) and min-max normalized to [0, 1]; a constant map
becomes zeros. ``--smooth N`` averages a gradient method over N noisy copies of each image
(SmoothGrad, Smilkov et al. 2017, Eq. 3, noise sigma 15% of the input range).

``--aug-smooth`` averages each CAM method over flipped and rescaled copies of the image, each
map brought back to the image (``model.attribution.test_time``); ``--eigen-smooth`` projects
the per-channel terms w_k A_k on their first principal component instead of summing them.
``--counterfactual`` adds, beside each gradient method's map, its counterfactual map
(``gradcam:counterfactual``: the gradients of -y^c, Selvaraju et al. 2017, sec. 3): the regions
whose removal would raise the class score.
"""
import sys
from pathlib import Path

import torch

from model.attribution import METHODS
from model.attribution.cam import cam_layer_applies
from model.attribution.gradients import RULE_OF_METHOD, rule_note
from model.attribution.maps import normalize_maps
from model.attribution.registry import VARIANT_SEPARATOR
from model.cli.arguments import (
    ArgumentParser,
    non_negative_int,
    positive_int,
    smoothing_options,
    smoothing_parser,
)
from model.cli.method_inputs import (
    has_test_split,
    load_split,
    method_parser,
    prepare_method,
    save_maps,
)
from model.cli.running import run
from model.cli.targets import resolve_targets
from model.data.sampling import test_predictions
from model.errors import UserError
from model.figures.heatmaps import plot_overlay_grid, show_image, show_overlay
from model.figures.plotting import Figure, write_figure
from model.evaluation.scoring import scorecam_stand_in
from model.nets.layers import conv_layer_names
from model.runtime.notes import note

CAM_METHODS = [name for name, method in METHODS.items() if method.family == "cam"]
DEFAULTS = METHODS["faster-scorecam"].defaults  # the CAM family's options
MAX_CLASS_MAPS = 10  # the one-image figure shows the most probable classes of ImageNet's 1000
SAVED = ("the first --method's maps as the registry returns them, before the figures' "
         "normalization to [0, 1]; maps_<method> (N, H, W) float32 for every --method, the "
         "first included, and maps_<method>:counterfactual with --counterfactual; method "
         "(the methods in order), layer, upsample, smooth, aug_smooth, eigen_smooth, "
         "max_channels; the --index or --image images only (not the class maps or the "
         "gallery)")


def plot_class_maps(image, maps, classes, probabilities, method, title):
    """One image with the map of every class as target, titled with each class's probability."""
    columns = 1 + len(classes)
    figure = Figure(figsize=(1.9 * columns + 0.8, 2.5))
    axes = figure.subplots(1, columns)
    show_image(axes[0], image, "input")
    for index, name in enumerate(classes):
        artist = show_overlay(axes[index + 1], image, maps[index],
                              f"{name}\np = {probabilities[index]:.2f}")
    figure.colorbar(artist, ax=axes, fraction=0.02, pad=0.01, label=f"{method} (0-1)")
    figure.suptitle(title)
    return figure


def image_title(info, label, prediction, probability):
    """'true ring / pred ring 0.98' (true class unknown for image files)."""
    true = info.classes[label] if label >= 0 else "?"
    return f"true {true}\npred {info.classes[prediction]} {probability:.2f}"


def counterfactual_columns(methods):
    """``methods`` with ``<method>:counterfactual`` after each gradient CAM method.

    Raises:
        UserError: none of them has a counterfactual map.
    """
    having = [method for method in methods if "counterfactual" in METHODS[method].defaults]
    if not having:
        choices = [name for name, method in METHODS.items() if "counterfactual" in method.defaults]
        raise UserError(f"--counterfactual applies to the gradient CAM methods "
                        f"({', '.join(choices)}); none of {', '.join(methods)} is one")
    others = [method for method in methods if method not in having]
    if others:
        note(f"no counterfactual map for {', '.join(others)} (no gradient dy^c/dA)")
    return [column for method in methods for column in (
        [method, f"{method}{VARIANT_SEPARATOR}counterfactual"] if method in having
        else [method])]


def column_title(column, smoothing):
    """A grid column's title: the method (or ``gradcam:counterfactual``) and, a line each, the
    smoothing its map had (the saved arrays keep the method's name)."""
    method = METHODS[column.partition(VARIANT_SEPARATOR)[0]]
    used = [option for option in smoothing if option.replace("-", "_") in method.defaults]
    return "\n".join([column, *used])


def gallery_selection(model, test_set, device, per_group, batch_size):
    """Indices of the first ``per_group`` correctly and incorrectly classified test images."""
    correct = test_predictions(model, test_set, device, batch_size) == test_set.labels
    return (correct.nonzero()[:per_group, 0].tolist(),
            (~correct).nonzero()[:per_group, 0].tolist())


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[method_parser("class_activation_maps", maps=SAVED),
                                     smoothing_parser()])
    parser.add_argument("--method", nargs="+", choices=list(METHODS), default=None,
                        help="attribution methods to show (default: the CAM family; cam only "
                             "where it applies); every registered method can be chosen")
    parser.add_argument("--layer", default=None,
                        help="conv layer whose feature maps are used (default: the last)")
    parser.add_argument("--smooth", type=non_negative_int, default=DEFAULTS["smooth"],
                        help="average gradient methods over N noisy copies (SmoothGrad; "
                             "default: 0 = off)")
    parser.add_argument("--counterfactual", action="store_true",
                        help="beside each gradient CAM method, its counterfactual map: the "
                             "gradients of -y^c, regions whose removal would raise the score")
    parser.add_argument("--max-channels", type=positive_int, default=DEFAULTS["max_channels"],
                        help=f"channels scored by faster-scorecam (default: "
                             f"{DEFAULTS['max_channels']})")
    parser.add_argument("--scorecam-channels", type=positive_int, default=None,
                        help="show Faster Score-CAM on the K channels of highest variance in "
                             "Score-CAM's place (default: exact Score-CAM, every channel)")
    parser.add_argument("--upsample", choices=("bilinear", "nearest"),
                        default=DEFAULTS["upsample"],
                        help="how maps reach the input size; nearest shows the raw cells "
                             "(default: bilinear)")
    parser.add_argument("--gallery", type=non_negative_int, default=6,
                        help="correct and incorrect test images in the gallery (default: 6; "
                             "0 = no gallery)")
    return parser


def explain(args):
    device, model, info, selection = prepare_method(args)
    layer = args.layer or conv_layer_names(model)[-1]
    methods = args.method or CAM_METHODS
    if not args.method and not cam_layer_applies(model, layer, selection.inputs):
        methods = [m for m in CAM_METHODS if m != "cam"]
        note(f"plain CAM left out: {layer} does not feed a global average pooling + "
             "Linear head (Zhou et al. 2016); Grad-CAM is its generalization")
    if args.scorecam_channels is not None and "scorecam" in methods:
        methods = scorecam_stand_in(methods, args.scorecam_channels)
        args.max_channels = args.scorecam_channels
        note(f"Faster Score-CAM on the {args.scorecam_channels} channels of highest variance "
             "stands in for Score-CAM (named faster-scorecam)")
    rules = {RULE_OF_METHOD.get(spec.partition(VARIANT_SEPARATOR)[0]) for spec in methods}
    for text in sorted({rule_note(model, rule) for rule in rules - {None}} - {""}):
        note(text)
    options = dict(batch_size=args.batch_size, max_channels=args.max_channels,
                   smooth=args.smooth, upsample=args.upsample, info=info, seed=args.seed,
                   aug_smooth=args.aug_smooth, eigen_smooth=args.eigen_smooth)
    for flag in ("aug_smooth", "eigen_smooth"):
        unsmoothed = [method for method in methods if flag not in METHODS[method].defaults]
        if getattr(args, flag) and unsmoothed:
            note(f"--{flag.replace('_', '-')} applies to the CAM family; "
                 f"{', '.join(unsmoothed)} shown without it")
    columns = counterfactual_columns(methods) if args.counterfactual else list(methods)

    def raw_maps_for(inputs, targets, spec):
        method, _, variant = spec.partition(VARIANT_SEPARATOR)
        generator = torch.Generator().manual_seed(args.seed)
        maps = METHODS[method](model, inputs, targets, layer=layer, generator=generator,
                               counterfactual=variant == "counterfactual", **options)
        return maps.detach().float()

    def maps_for(inputs, targets, method):
        return normalize_maps(raw_maps_for(inputs, targets, method))

    with torch.no_grad():
        probabilities = torch.softmax(model(selection.inputs), 1)
    predictions = probabilities.argmax(1)
    targets = resolve_targets(args.target, info, probabilities, selection.labels)
    images = info.denormalize(selection.inputs)
    titles = [f"{name}\n" + image_title(info, int(label), int(pred), float(prob[pred]))
              for name, label, pred, prob in zip(selection.names, selection.labels,
                                                 predictions, probabilities)]
    out = Path(args.out)
    raw_maps = {method: raw_maps_for(selection.inputs, targets, method) for method in columns}
    maps = {column_title(column, smoothing_options(args)): normalize_maps(method_maps)
            for column, method_maps in raw_maps.items()}
    written = [write_figure(plot_overlay_grid(images, maps, titles),
                            out / f"cam_{layer}_grid.png")]
    if args.save_maps:
        written.append(save_maps(args, info, selection, raw_maps[methods[0]], targets,
                                 method=methods, layer=layer, aug_smooth=args.aug_smooth,
                                 eigen_smooth=args.eigen_smooth,
                                 **{f"maps_{method}": raw_maps[method] for method in columns}))

    shown = probabilities[0].argsort(descending=True)[:MAX_CLASS_MAPS].sort().values
    every = len(shown) == len(info.classes)
    first = selection.inputs[:1].expand(len(shown), -1, -1, -1)
    class_maps = maps_for(first, shown, methods[0])
    written.append(write_figure(
        plot_class_maps(images[0], class_maps, [info.classes[c] for c in shown],
                        probabilities[0, shown].tolist(), methods[0],
                        f"{selection.names[0]}: {methods[0]} at {layer}, "
                        + ("every class as target" if every else
                           f"the {len(shown)} most probable classes as target")),
        out / f"cam_{layer}_classes_{selection.names[0]}.png"))

    if args.gallery and not has_test_split(info):
        note(f"no gallery: there is no {info.name} test split here")
    elif args.gallery:
        test_set = load_split(info, "test", args)
        correct, wrong = gallery_selection(model, test_set, device, args.gallery,
                                           args.batch_size)
        for group, indices in (("correct", correct), ("incorrect", wrong)):
            if not indices:
                note(f"no {group}ly classified test images for the gallery")
                continue
            inputs = info.normalize(test_set.images[indices].to(device))
            with torch.no_grad():
                group_probabilities = torch.softmax(model(inputs), 1)
            group_predictions = group_probabilities.argmax(1)
            group_maps = {method: maps_for(inputs, group_predictions, method)
                          for method in methods[:3]}
            group_titles = [f"test_{i}\n" + image_title(info, int(test_set.labels[i]), int(p),
                                                         float(prob[p]))
                            for i, p, prob in zip(indices, group_predictions,
                                                  group_probabilities)]
            written.append(write_figure(
                plot_overlay_grid(info.denormalize(inputs), group_maps, group_titles),
                out / f"cam_{layer}_gallery_{group}.png"))
    return written


def main(argv=None, written=None, notes=None):
    return run(explain, get_args_parser().parse_args(argv), written=written, notes=notes)


if __name__ == "__main__":
    sys.exit(main())
