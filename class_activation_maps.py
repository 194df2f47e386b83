"""Class activation maps: where in the image the evidence for a class lies.

    python class_activation_maps.py --dataset shapes --index 0 1 2 3
    python class_activation_maps.py --dataset shapes --method gradcam scorecam --layer conv3
    python class_activation_maps.py --dataset mnist --arch simple --method gradcam --smooth 16
    python class_activation_maps.py --image cat.png --dataset cifar10 --target cat

Every method turns the feature maps A_k of one conv layer (``--layer``, default the last) into
a map M = ReLU(sum_k w_k A_k) or directly into a map, and differs only in that step:

    cam            w_k = fc weight W[c, k]                    Zhou et al. 2016, Eq. 2
    gradcam        w_k = mean_ij dy^c/dA_kij                  Selvaraju et al. 2017, Eq. 1-2
    gradcam++      w_k = sum_ij a_kij ReLU(dy^c/dA_kij),
                   a = g^2 / (2 g^2 + sum_ab A_kab g^3)        Chattopadhay et al. 2018, Eq. 19
    xgradcam       w_k = sum_ij (A_kij / sum_ab A_kab) dy^c/dA_kij          Fu et al. 2020
    hirescam       M = ReLU(sum_k dy^c/dA_k * A_k)             Draelos & Carin 2020
    layercam       M = ReLU(sum_k ReLU(dy^c/dA_k) * A_k)       Jiang et al. 2021, Eq. 5
    scorecam       w_k = softmax(f(x * H_k))_c, H_k = A_k upsampled and min-max normalized
                                                               Wang et al. 2020, Eq. 6-8
    faster-scorecam  scorecam on the --max-channels channels of highest activation variance
    ablationcam    w_k = (y^c - y^c with A_k zeroed) / y^c     Desai & Ramaswamy 2020, Eq. 3
    eigencam       M = A projected on its first principal component     Muhammad & Yeasin 2020
    guided-gradcam gradcam upsampled times guided backprop (from deconvnet.py)
                                                               Selvaraju et al. 2017, sec. 3.1

y^c is the class score before the softmax. Maps are upsampled to the input (bilinear, or
``--upsample nearest`` for the raw cells) and min-max normalized to [0, 1]; a constant map
becomes zeros. ``--smooth N`` averages a gradient method over N noisy copies of each image
(SmoothGrad, Smilkov et al. 2017, Eq. 3, noise sigma 15% of the input range).
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from deconvnet import compute_input_gradient
from model.architectures import conv_layer_names, get_layer, split_at
from model.cli import ArgumentParser, non_negative_int, positive_int, run
from model.datasets import load_dataset
from model.engine import fast_layout, iterate_batches
from model.errors import UserError
from model.heatmaps import normalize_maps, resize_maps, show_image, show_overlay
from model.images import method_parser, prepare_method, resolve_targets
from model.plotting import Figure
from model.runtime import write_figure

EPSILON = 1e-7
GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam",
                    "guided-gradcam")
METHODS = ("cam",) + GRADIENT_METHODS + ("scorecam", "faster-scorecam", "ablationcam",
                                         "eigencam")


def activations_and_gradients(body, head, inputs, targets, need_gradients=True):
    """A = body(x) (N, K, h, w), dy^c/dA (N, K, h, w) or None, and the logits (N, classes).

    Without ``need_gradients`` (CAM, Score-CAM, Ablation-CAM, Eigen-CAM) nothing is
    backpropagated.
    """
    if not need_gradients:
        with torch.no_grad():
            activations = body(inputs)
            return activations, None, head(activations)
    with torch.enable_grad():
        activations = body(inputs).detach().requires_grad_(True)
        logits = head(activations)
        score = logits.gather(1, targets[:, None]).sum()  # images are independent: sum is fine
        gradients = torch.autograd.grad(score, activations)[0]
    return activations.detach(), gradients, logits.detach()


def weighted_sum(weights, activations):
    """ReLU(sum_k w_k A_k): (N, K) weights, (N, K, h, w) activations -> (N, h, w)."""
    return F.relu((weights[:, :, None, None] * activations).sum(1))


def gradcam_plus_plus_weights(activations, gradients):
    """Chattopadhay et al. 2018, Eq. 19: closed-form alphas for an exponential score."""
    g2, g3 = gradients ** 2, gradients ** 3
    denominator = 2 * g2 + activations.sum((2, 3), keepdim=True) * g3
    alphas = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alphas * F.relu(gradients)).sum((2, 3))


def eigen_map(activations):
    """Projection of each position's activation vector on the first principal component.

    The sign of a principal component is arbitrary; it is chosen so that the map correlates
    positively with the channel-summed activation, which is where the features fire.
    """
    count, channels, height, width = activations.shape
    vectors = activations.flatten(2).transpose(1, 2)  # (N, hw, K)
    centered = vectors - vectors.mean(1, keepdim=True)
    _, _, right = torch.linalg.svd(centered, full_matrices=False)  # right: (N, K, K)
    projection = (centered @ right[:, 0, :, None])[..., 0]  # (N, hw)
    total = vectors.sum(2)
    sign = torch.sign(((projection * (total - total.mean(1, keepdim=True))).sum(1)))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return F.relu(projection * sign[:, None]).view(count, height, width)


@torch.no_grad()
def score_weights(model, inputs, activations, targets, batch_size, channels=None):
    """Score-CAM weights (Wang et al. 2020, Eq. 6-8), masks batched ``batch_size`` at a time.

    Each activation map A_k is upsampled to the input size and min-max normalized to H_k in
    [0, 1]; the weight is the target's softmax probability for the masked input x * H_k.

    Args:
        channels: (N, J) channels to score per image (all when None); others get weight 0.
    Returns:
        (N, K) weights.
    """
    count, total_channels = activations.shape[:2]
    if channels is None:
        channels = torch.arange(total_channels, device=inputs.device).expand(count, -1)
    chosen = channels.shape[1]
    image_index = torch.arange(count, device=inputs.device).repeat_interleave(chosen)
    flat_channels = channels.flatten()
    scores = torch.empty(count * chosen, dtype=activations.dtype, device=inputs.device)
    size = inputs.shape[-1]
    for start in range(0, count * chosen, batch_size):
        part = slice(start, start + batch_size)
        maps = activations[image_index[part], flat_channels[part]]  # (B, h, w)
        masks = normalize_maps(resize_maps(maps, size))  # (B, H, W) in [0, 1]
        masked = inputs[image_index[part]] * masks[:, None]
        probabilities = torch.softmax(model(fast_layout(masked)), 1)
        scores[part] = probabilities.gather(1, targets[image_index[part], None])[:, 0]
    weights = torch.zeros(count, total_channels, dtype=activations.dtype, device=inputs.device)
    weights.scatter_(1, channels, scores.view(count, chosen))
    return weights


@torch.no_grad()
def ablation_weights(head, activations, logits, targets, batch_size):
    """Ablation-CAM weights (Desai & Ramaswamy 2020, Eq. 3), ablations batched.

    w_k = (y^c - y^c_k) / y^c, with y^c_k the class score when A_k is set to zero.
    """
    count, channels = activations.shape[:2]
    image_index = torch.arange(count, device=activations.device).repeat_interleave(channels)
    channel_index = torch.arange(channels, device=activations.device).repeat(count)
    ablated_scores = torch.empty(count * channels, dtype=activations.dtype,
                                 device=activations.device)
    for start in range(0, count * channels, batch_size):
        part = slice(start, start + batch_size)
        ablated = activations[image_index[part]].clone()
        ablated[torch.arange(len(ablated)), channel_index[part]] = 0.0
        ablated_scores[part] = head(ablated).gather(1, targets[image_index[part], None])[:, 0]
    score = logits.gather(1, targets[:, None])  # (N, 1)
    return (score - ablated_scores.view(count, channels)) / (score.abs() + EPSILON)


@dataclass
class CamContext:
    """Everything a method may use: the split net, the batch and what one backward pass gave."""

    model: nn.Module
    head: nn.Sequential
    inputs: torch.Tensor  # (N, C, H, W)
    targets: torch.Tensor  # (N,)
    activations: torch.Tensor  # A: (N, K, h, w)
    gradients: torch.Tensor  # dy^c/dA: (N, K, h, w)
    logits: torch.Tensor  # (N, classes)
    batch_size: int
    max_channels: int


def _gradcam(ctx):
    return weighted_sum(ctx.gradients.mean((2, 3)), ctx.activations)  # Selvaraju Eq. 1-2


def _guided_gradcam(ctx):
    guided = compute_input_gradient(ctx.model, ctx.inputs, ctx.targets, "guided")
    cam = resize_maps(_gradcam(ctx), ctx.inputs.shape[-1])  # (N, H, W)
    return (guided * cam[:, None]).abs().amax(1)  # strongest channel of the product


def _faster_scorecam(ctx):
    top = min(ctx.max_channels, ctx.activations.shape[1])
    channels = ctx.activations.flatten(2).var(2).topk(top, dim=1).indices
    return weighted_sum(score_weights(ctx.model, ctx.inputs, ctx.activations, ctx.targets,
                                      ctx.batch_size, channels), ctx.activations)


# A method maps a CamContext to a raw map (N, h, w), or (N, H, W) for guided-gradcam.
METHOD_MAPS = {
    "cam": lambda ctx: weighted_sum(cam_weights(ctx.head, ctx.targets),
                                    ctx.activations),
    "gradcam": _gradcam,
    "gradcam++": lambda ctx: weighted_sum(
        gradcam_plus_plus_weights(ctx.activations, ctx.gradients), ctx.activations),
    "xgradcam": lambda ctx: weighted_sum(
        (ctx.activations / (ctx.activations.sum((2, 3), keepdim=True) + EPSILON)
         * ctx.gradients).sum((2, 3)), ctx.activations),
    "hirescam": lambda ctx: F.relu((ctx.gradients * ctx.activations).sum(1)),
    "layercam": lambda ctx: F.relu((F.relu(ctx.gradients) * ctx.activations).sum(1)),
    "guided-gradcam": _guided_gradcam,
    "scorecam": lambda ctx: weighted_sum(score_weights(
        ctx.model, ctx.inputs, ctx.activations, ctx.targets, ctx.batch_size), ctx.activations),
    "faster-scorecam": _faster_scorecam,
    "ablationcam": lambda ctx: weighted_sum(ablation_weights(
        ctx.head, ctx.activations, ctx.logits, ctx.targets, ctx.batch_size), ctx.activations),
    "eigencam": lambda ctx: eigen_map(ctx.activations),
}
assert set(METHOD_MAPS) == set(METHODS)


def raw_map(method, model, inputs, targets, layer, batch_size=256, max_channels=16):
    """One method's map before upsampling: (N, h, w) at the layer's resolution."""
    if method not in METHOD_MAPS:
        raise UserError(f"unknown method '{method}'; choose from {', '.join(METHODS)}")
    body, head = split_at(model, layer)
    activations, gradients, logits = activations_and_gradients(
        body, head, inputs, targets, need_gradients=method in GRADIENT_METHODS)
    return METHOD_MAPS[method](CamContext(model, head, inputs, targets, activations, gradients,
                                          logits, batch_size, max_channels))


def cam_applies(head):
    """CAM needs the maps to feed global average pooling and one Linear layer, nothing else."""
    return [type(m) for m in head.children()] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]


def cam_weights(head, targets):
    """CAM's w_k^c (Zhou et al. 2016, Eq. 2): the final Linear layer's weights for class c."""
    if not cam_applies(head):
        raise UserError("cam needs the chosen layer to feed global average pooling and one "
                        "Linear layer (the last conv layer of --arch vgg); use gradcam, its "
                        "generalization, for other layers and nets")
    return head[-1].weight[targets].detach()  # (N, K); maps carry no autograd history


def compute_cam(model, inputs, targets, method, layer, *, batch_size=256, max_channels=16,
                smooth=0, noise=0.15, upsample="bilinear", generator=None):
    """Class activation maps of one method for a batch of images.

    Args:
        model: a Sequential net of the ``model`` package in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N,) class per image.
        method: one of ``METHODS``; layer: a conv layer name.
        batch_size: masked or ablated variants per forward pass (scorecam, ablationcam).
        max_channels: channels scored by faster-scorecam.
        smooth: average a gradient method over this many noisy copies (0: off).
        noise: SmoothGrad's sigma as a fraction of each image's value range.
        upsample: ``bilinear`` or ``nearest``.
        generator: for the SmoothGrad noise.

    Returns:
        (N, H, W) maps in [0, 1], finite.
    """
    if smooth and method in GRADIENT_METHODS:
        count = len(inputs)
        span = (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1))[:, None, None, None]
        copies = inputs.repeat_interleave(smooth, 0)  # (N * smooth, C, H, W)
        sigma = noise * span.repeat_interleave(smooth, 0)
        draws = torch.randn(copies.shape, generator=generator).to(inputs.device)
        maps = raw_map(method, model, copies + sigma * draws, targets.repeat_interleave(
            smooth, 0), layer, batch_size, max_channels)
        maps = maps.view(count, smooth, *maps.shape[1:]).mean(1)
    else:
        maps = raw_map(method, model, inputs, targets, layer, batch_size, max_channels)
    if maps.shape[-1] != inputs.shape[-1]:
        maps = resize_maps(maps, inputs.shape[-1], upsample)
    return normalize_maps(maps)


def plot_cam_grid(images, maps, row_titles, colorbar_label="map (0-1)"):
    """A row per image: the input, then one overlay per method (``maps``: name -> (N, H, W))."""
    count, columns = len(images), 1 + len(maps)
    figure = Figure(figsize=(1.9 * columns + 0.8, 2.4 * count + 0.4))
    axes = figure.subplots(count, columns, squeeze=False)
    artist = None
    for row in range(count):
        show_image(axes[row, 0], images[row], row_titles[row])
        for column, (method, method_maps) in enumerate(maps.items(), start=1):
            artist = show_overlay(axes[row, column], images[row], method_maps[row],
                                  method if row == 0 else None)
    figure.colorbar(artist, ax=axes, fraction=0.02, pad=0.01, label=colorbar_label)
    return figure


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


def gallery_selection(model, test_set, device, per_group, batch_size):
    """Indices of the first ``per_group`` correctly and incorrectly classified test images."""
    predictions = []
    with torch.no_grad():
        for inputs, _ in iterate_batches(test_set, batch_size, device):
            predictions.append(model(inputs).argmax(1).cpu())
    correct = torch.cat(predictions) == test_set.labels
    return (correct.nonzero()[:per_group, 0].tolist(),
            (~correct).nonzero()[:per_group, 0].tolist())


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[method_parser("class_activation_maps")])
    parser.add_argument("--method", nargs="+", choices=METHODS, default=None,
                        help="methods to run (default: all; cam only where it applies)")
    parser.add_argument("--layer", default=None,
                        help="conv layer whose feature maps are used (default: the last)")
    parser.add_argument("--smooth", type=non_negative_int, default=0,
                        help="average gradient methods over N noisy copies (SmoothGrad; "
                             "default: 0 = off)")
    parser.add_argument("--max-channels", type=positive_int, default=16,
                        help="channels scored by faster-scorecam (default: 16)")
    parser.add_argument("--upsample", choices=("bilinear", "nearest"), default="bilinear",
                        help="how maps reach the input size; nearest shows the raw cells "
                             "(default: bilinear)")
    parser.add_argument("--gallery", type=non_negative_int, default=6,
                        help="correct and incorrect test images in the gallery (default: 6; "
                             "0 = no gallery)")
    return parser


def explain(args):
    device, model, info, selection = prepare_method(args)
    layer = args.layer or conv_layer_names(model)[-1]
    get_layer(model, layer)
    methods = args.method or [m for m in METHODS
                              if m != "cam" or cam_applies(split_at(model, layer)[1])]
    options = dict(batch_size=args.batch_size, max_channels=args.max_channels,
                   smooth=args.smooth, upsample=args.upsample)

    def maps_for(inputs, targets, method):
        generator = torch.Generator().manual_seed(args.seed)
        return compute_cam(model, inputs, targets, method, layer, generator=generator,
                           **options)

    with torch.no_grad():
        probabilities = torch.softmax(model(selection.inputs), 1)
    predictions = probabilities.argmax(1)
    targets = resolve_targets(args.target, info, probabilities, selection.labels)
    images = info.denormalize(selection.inputs)
    titles = [f"{name}\n" + image_title(info, int(label), int(pred), float(prob[pred]))
              for name, label, pred, prob in zip(selection.names, selection.labels,
                                                 predictions, probabilities)]
    out = Path(args.out)
    maps = {method: maps_for(selection.inputs, targets, method) for method in methods}
    write_figure(plot_cam_grid(images, maps, titles), out / f"cam_{layer}_grid.png")

    first = selection.inputs[:1].expand(len(info.classes), -1, -1, -1)
    class_maps = maps_for(first, torch.arange(len(info.classes), device=device), methods[0])
    write_figure(plot_class_maps(images[0], class_maps, info.classes, probabilities[0].tolist(),
                          methods[0], f"{selection.names[0]}: {methods[0]} at {layer}, "
                                      "every class as target"),
          out / f"cam_{layer}_classes_{selection.names[0]}.png")

    if args.gallery:
        test_set = load_dataset(info.name, "test", args.data_dir)
        correct, wrong = gallery_selection(model, test_set, device, args.gallery,
                                           args.batch_size)
        for group, indices in (("correct", correct), ("incorrect", wrong)):
            if not indices:
                print(f"note: no {group}ly classified test images for the gallery",
                      file=sys.stderr)
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
            write_figure(plot_cam_grid(info.denormalize(inputs), group_maps, group_titles),
                  out / f"cam_{layer}_gallery_{group}.png")


def main(argv=None):
    return run(explain, get_args_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
