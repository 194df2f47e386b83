"""Class activation maps: where in a conv layer's feature maps the evidence for a class lies.

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
    guided-gradcam gradcam upsampled times guided backprop (model.attribution.gradients)
                                                               Selvaraju et al. 2017, sec. 3.1

y^c is the class score before the softmax. Several targets per image (``targets`` (N, T)):
cam, scorecam, faster-scorecam, ablationcam and eigencam read every target's weights from the
same passes (the logits of one pass hold every class's score); the gradient methods need a
backward pass per target and are repeated per target by the registry. Maps are upsampled to
the input (bilinear, or ``--upsample nearest`` for the raw cells) and min-max normalized to
[0, 1]; a constant map becomes zeros. ``--smooth N`` averages a gradient method over N noisy
copies of each image (SmoothGrad, Smilkov et al. 2017, Eq. 3, noise sigma 15% of the input range).

Options of every method here (registry defaults, off): ``aug_smooth``, the mean map over
flipped and rescaled copies of the image (``model.attribution.test_time``); ``eigen_smooth``,
the per-channel terms (w_k A_k; g_k A_k for HiResCAM) projected on their first principal
component instead of summed (:func:`combine_terms`). The gradient methods also take
``counterfactual``: the gradients of -y^c instead of y^c (Selvaraju et al. 2017, sec. 3,
"Counterfactual Explanations"), the regions whose removal would raise the class score.

The layer is reached by forward hooks (``model.nets.layers``), so any ``nn.Module`` works; a conv
name of the project's nets stands for its conv-BatchNorm-ReLU block. Ablation-CAM runs its
edited maps through the layers after the layer alone (``model.nets.graph_split``), or, for a
net ``torch.fx`` cannot cut there, the whole net with the layer's output replaced by a hook.
"""
import functools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attribution import shared_passes
from model.attribution.gradients import ONE_BACKWARD, input_gradient
from model.attribution.maps import normalize_maps, resize_maps
from model.attribution.registry import register
from model.attribution.test_time import test_time_augmented
from model.errors import UserError
from model.nets.graph_split import NotSplittable, split_after
from model.nets.layers import as_feature_maps, block_end, recorded_output, replaced_output
from model.runtime.batching import variant_batch
from model.runtime.device import fast_layout
from model.runtime.notes import note
from model.nets.folding import fold_batch_norm

EPSILON = 1e-7

METHOD_MAPS = {}  # name -> function(CamContext) -> raw map (N, h, w), in registration order

GRADIENT_METHODS = set()  # the methods that need dy^c/dA (one backward pass)

# The methods whose map function reads every target from the same passes: it gets
# ``CamContext.targets`` (N, T) and returns (N, T, h, w); the others get (N,) and return (N, h, w).
SHARED_PASSES = set()

# Every CAM method's options (the registry's defaults); the gradient ones also take
# ``counterfactual`` (:data:`GRADIENT_OPTIONS`).
OPTIONS = {"upsample": "bilinear", "smooth": 0, "noise": 0.15, "batch_size": 256,
           "aug_smooth": False, "eigen_smooth": False}
GRADIENT_OPTIONS = {"counterfactual": False}


def activations_and_gradients(model, layer, inputs, targets, need_gradients=True,
                              counterfactual=False):
    """A = the layer's maps (N, K, h, w), dy^c/dA (N, K, h, w) or None, and the logits.

    One forward pass with a hook on ``layer``; without ``need_gradients`` (CAM, Score-CAM,
    Ablation-CAM, Eigen-CAM) nothing is backpropagated. Inside
    ``model.attribution.shared_passes.shared_passes`` of these inputs and targets, the values
    come from the one pass it shares. With ``counterfactual`` the gradients
    are those of -y^c (Selvaraju et al. 2017, sec. 3, "Counterfactual Explanations"): what
    speaks against the class.
    """
    if need_gradients:
        passes = shared_passes.lookup(model, inputs, targets, layer)
        if passes is not None:  # one pass of the batch already serves every layer
            return passes.activations_and_gradients(layer, counterfactual)
        # a graph down to the layer even where the weights need no gradient
        inputs = inputs.detach().requires_grad_(True)
    with recorded_output(model, layer) as record, torch.set_grad_enabled(need_gradients):
        logits = model(inputs)
        activations = as_feature_maps(record.get("output"), model, layer)
        if not need_gradients:
            return activations, None, logits
        score = logits.gather(1, targets[:, None]).sum()  # images are independent: sum is fine
        if counterfactual:
            score = -score
        gradients = torch.autograd.grad(score, activations)[0]
    return activations.detach(), gradients, logits.detach()


def weighted_terms(weights, activations):
    """w_k A_k, channel by channel: (N, K) weights, (N, K, h, w) activations -> (N, K, h, w);
    or (N, T, K) weights, one row per target, -> (N, T, K, h, w)."""
    if weights.dim() == 3:
        return weights[..., None, None] * activations[:, None]
    return weights[:, :, None, None] * activations


def combine_terms(terms, eigen_smooth=False):
    """A map from its per-channel terms T_k (..., K, h, w), such as w_k A_k: ReLU(sum_k T_k),
    or with ``eigen_smooth`` ReLU of the terms' projection on their first principal
    component (as pytorch-grad-cam's ``eigen_smooth`` does with the weighted activations;
    it keeps the dominant pattern of the terms and drops what varies apart from it).
    Returns (...,  h, w)."""
    if not eigen_smooth:
        return F.relu(terms.sum(-3))
    leading, (channels, height, width) = terms.shape[:-3], terms.shape[-3:]
    flat = terms.reshape(-1, channels, height, width)
    projection = principal_projection(flat, reference=flat.sum(1))
    return F.relu(projection).view(*leading, height, width)


def principal_projection(vectors, reference):
    """Each position's vector (B, K, h, w) projected on the first principal component of the
    image's h * w vectors, centred: (B, h, w).

    The sign of a principal component is arbitrary; it is chosen so that the projection
    correlates positively with ``reference`` (B, h, w) (the channel sum: where the features,
    or the weighted terms, add up).
    """
    count, channels, height, width = vectors.shape
    rows = vectors.flatten(2).transpose(1, 2)  # (B, hw, K)
    centered = rows - rows.mean(1, keepdim=True)
    _, _, right = torch.linalg.svd(centered, full_matrices=False)  # right: (B, K', K)
    projection = (centered @ right[:, 0, :, None])[..., 0]  # (B, hw)
    total = reference.flatten(1)
    sign = torch.sign((projection * (total - total.mean(1, keepdim=True))).sum(1))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return (projection * sign[:, None]).view(count, height, width)


def gradcam_plus_plus_weights(activations, gradients):
    """Chattopadhay et al. 2018, Eq. 19: closed-form alphas for an exponential score."""
    g2, g3 = gradients ** 2, gradients ** 3
    denominator = 2 * g2 + activations.sum((2, 3), keepdim=True) * g3
    alphas = g2 / torch.where(denominator != 0, denominator, torch.ones_like(denominator))
    return (alphas * F.relu(gradients)).sum((2, 3))


def eigen_map(activations):
    """Eigen-CAM: ReLU of each position's activation vector (N, K, h, w) projected on the
    first principal component, signed to correlate with the channel-summed activation
    (:func:`principal_projection`)."""
    return F.relu(principal_projection(activations, activations.sum(1)))


@torch.no_grad()
def score_weights(model, inputs, activations, targets, batch_size, channels=None):
    """Score-CAM weights (Wang et al. 2020, Eq. 6-8), masks batched ``batch_size`` at a time.

    Each activation map A_k is upsampled to the input size and min-max normalized to H_k in
    [0, 1]; the weight is the target's softmax probability for the masked input x * H_k. Every
    target of an image reads its probability from the same masked passes, and the channels
    whose map is zero everywhere (the same input, x * 0) from one pass per image.

    Args:
        targets: (N,) one class per image, or (N, T) several.
        channels: (N, J) channels to score per image (all when None); others get weight 0.
    Returns:
        (N, K) weights, or (N, T, K) for targets (N, T).
    """
    several = targets.dim() == 2
    targets = targets if several else targets[:, None]  # (N, T)
    slots = targets.shape[1]
    count, total_channels = activations.shape[:2]
    if channels is None:
        channels = torch.arange(total_channels, device=inputs.device).expand(count, -1)
    chosen = channels.shape[1]
    image_index = torch.arange(count, device=inputs.device).repeat_interleave(chosen)
    flat_channels = channels.flatten()
    scores = torch.empty(count * chosen, slots, dtype=activations.dtype, device=inputs.device)
    # A map that is zero everywhere (a dead unit: 23% of the trained MobileNetV2's features.18
    # channels on a photo) masks the image to zeros, the same input for every such channel of
    # an image: one pass per image serves them all.
    dead = (activations.flatten(2) == 0).all(2)[image_index, flat_channels]  # (P,)
    pairs = torch.arange(count * chosen, device=inputs.device)
    first_dead = torch.full((count,), count * chosen, device=inputs.device)
    first_dead.scatter_reduce_(0, image_index[dead], pairs[dead], reduce="amin")
    passes = ~dead
    passes[first_dead[first_dead < count * chosen]] = True
    passes = pairs[passes]
    size = inputs.shape[-1]
    batch_size = variant_batch(batch_size, inputs)
    net = fold_batch_norm(model)  # the same scores, up to float32 rounding, sooner
    for start in range(0, len(passes), batch_size):
        part = passes[start:start + batch_size]
        maps = activations[image_index[part], flat_channels[part]]  # (B, h, w)
        masks = normalize_maps(resize_maps(maps, size))  # (B, H, W) in [0, 1]
        masked = inputs[image_index[part]] * masks[:, None]
        probabilities = torch.softmax(net(fast_layout(masked)), 1)
        scores[part] = probabilities.gather(1, targets[image_index[part]])  # (B, T)
    scores[dead] = scores[first_dead[image_index[dead]]]
    weights = torch.zeros(count, slots, total_channels, dtype=activations.dtype,
                          device=inputs.device)
    weights.scatter_(2, channels[:, None].expand(-1, slots, -1),
                     scores.view(count, chosen, slots).transpose(1, 2))
    return weights if several else weights[:, 0]


def ablated_logits(model, layer, inputs, whole_net=False):
    """A function (edited maps (B, K, h, w), image index (B,)) -> logits (B, classes): the net
    run on from the layer's edited output A for copies of ``inputs[image index]``.

    Only the layers after the layer run (``model.nets.graph_split``): the layers before it
    give every edited copy the same values, computed once (A itself, and the values a skip
    connection around the layer carries past it). A net ``torch.fx`` cannot cut there falls
    back, with one line on stderr, to the whole net with the layer's output replaced by a
    hook; ``whole_net`` asks for that re-run outright (the reference that the tests and
    bench/ablation_speed.py hold the cut against).
    """
    def whole(ablated, image_index):
        with replaced_output(model, layer, ablated):
            return model(inputs[image_index])

    if whole_net:
        return whole
    try:
        split = split_after(model, block_end(model, layer))
        carried = split.carried_values(inputs)
    except NotSplittable as reason:
        note(f"ablation-cam: {reason}; re-running the whole net for every ablated channel")
        return whole

    def head(ablated, image_index):
        return split.head(ablated, *[value[image_index] for value in carried])
    return head


@torch.no_grad()
def ablation_weights(model, layer, inputs, activations, logits, targets, batch_size,
                     whole_net=False):
    """Ablation-CAM weights (Desai & Ramaswamy 2020, Eq. 3), ablations batched.

    w_k = (y^c - y^c_k) / y^c, with y^c_k the class score when A_k is set to zero: the layers
    after the layer run on from the edited maps (:func:`ablated_logits`; with ``whole_net``
    the whole net, with a hook replacing the layer's output). Every target of an image reads
    its score from the same ablated passes.

    Args:
        targets: (N,) one class per image, or (N, T) several.
    Returns:
        (N, K) weights, or (N, T, K) for targets (N, T).
    """
    several = targets.dim() == 2
    targets = targets if several else targets[:, None]  # (N, T)
    slots = targets.shape[1]
    run = ablated_logits(model, layer, inputs, whole_net)
    count, channels = activations.shape[:2]
    image_index = torch.arange(count, device=activations.device).repeat_interleave(channels)
    channel_index = torch.arange(channels, device=activations.device).repeat(count)
    ablated_scores = torch.empty(count * channels, slots, dtype=activations.dtype,
                                 device=activations.device)
    batch_size = variant_batch(batch_size, inputs)
    for start in range(0, count * channels, batch_size):
        part = slice(start, start + batch_size)
        ablated = activations[image_index[part]].clone()  # (B, K, h, w)
        ablated[torch.arange(len(ablated), device=ablated.device), channel_index[part]] = 0.0
        scores = run(ablated, image_index[part])  # (B, classes)
        ablated_scores[part] = scores.gather(1, targets[image_index[part]])  # (B, T)
    score = logits.gather(1, targets)[:, :, None]  # (N, T, 1)
    ablated_scores = ablated_scores.view(count, channels, slots).transpose(1, 2)  # (N, T, K)
    weights = (score - ablated_scores) / (score.abs() + EPSILON)
    return weights if several else weights[:, 0]


@dataclass
class CamContext:
    """Everything a method may use: the split net, the batch and what one backward pass gave."""

    model: nn.Module
    layer: str
    inputs: torch.Tensor  # (N, C, H, W)
    targets: torch.Tensor  # (N,); (N, T) for the methods in SHARED_PASSES
    activations: torch.Tensor  # A: (N, K, h, w)
    gradients: torch.Tensor  # dy^c/dA: (N, K, h, w)
    logits: torch.Tensor  # (N, classes)
    batch_size: int
    max_channels: int
    eigen_smooth: bool = False
    counterfactual: bool = False  # the gradients are those of -y^c

    def combine(self, terms):
        """The map from its per-channel terms (:func:`combine_terms`)."""
        return combine_terms(terms, self.eigen_smooth)


def layer_map(method, model, inputs, targets, layer, batch_size=256, max_channels=16,
              eigen_smooth=False, counterfactual=False):
    """One method's map before upsampling: (N, h, w) at the layer's resolution for targets
    (N,); (N, T, h, w) for targets (N, T), which only the methods in ``SHARED_PASSES`` take.
    ``eigen_smooth`` and ``counterfactual``: see :func:`class_activation_map`."""
    if method not in METHOD_MAPS:
        raise UserError(f"unknown method '{method}'; choose from {', '.join(METHOD_MAPS)}")
    several = targets.dim() == 2
    assert method in SHARED_PASSES or not several, f"{method} takes one target per image"
    if counterfactual and method not in GRADIENT_METHODS:
        raise UserError(f"counterfactual maps negate the gradients dy^c/dA: they apply to "
                        f"{', '.join(sorted(GRADIENT_METHODS))}, not {method}")
    activations, gradients, logits = activations_and_gradients(
        model, layer, inputs, targets, need_gradients=method in GRADIENT_METHODS,
        counterfactual=counterfactual)
    if method in SHARED_PASSES and not several:
        targets = targets[:, None]  # (N, 1): these map functions take (N, T)
    maps = METHOD_MAPS[method](CamContext(model, layer, inputs, targets, activations, gradients,
                                          logits, batch_size, max_channels, eigen_smooth,
                                          counterfactual))
    return maps[:, 0] if method in SHARED_PASSES and not several else maps


def final_linear(model):
    """The model's last ``nn.Linear`` layer (the class scores), or None."""
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    return linears[-1] if linears else None


def cam_applies(model, activations, logits):
    """Whether the logits are global average pooling of ``activations`` then one Linear
    layer, y = W mean_ij A_ij + b: the form CAM needs (Zhou et al. 2016, Eq. 2).

    Checked on the numbers rather than the module graph, so it holds for any architecture
    (a torchvision ResNet's ``layer4`` too) and fails for any layer with more in between.
    """
    linear = final_linear(model)
    if linear is None or linear.in_features != activations.shape[1]:
        return False
    predicted = F.linear(activations.mean((2, 3)), linear.weight, linear.bias)
    scale = logits.abs().max().clamp_min(1.0)
    return bool(torch.allclose(predicted, logits, rtol=1e-4, atol=1e-4 * float(scale)))


def cam_layer_applies(model, layer, inputs):
    """:func:`cam_applies` for ``layer`` of ``model``, checked with one forward of ``inputs``."""
    activations, _, logits = activations_and_gradients(model, layer, inputs[:2], None,
                                                       need_gradients=False)
    return cam_applies(model, activations, logits)


def cam_weights(model, activations, logits, targets):
    """CAM's w_k^c (Zhou et al. 2016, Eq. 2): the final Linear layer's weights for class c,
    (N, K) for targets (N,), (N, T, K) for targets (N, T)."""
    if not cam_applies(model, activations, logits):
        raise UserError("cam needs the chosen layer to feed global average pooling and one "
                        "Linear layer (the last conv layer of --arch vgg); use gradcam, its "
                        "generalization, for other layers and nets")
    return final_linear(model).weight[targets].detach()  # no autograd history


def class_activation_map(model, inputs, targets, *, layer, method, batch_size, smooth, noise,
                         upsample, aug_smooth=False, eigen_smooth=False, counterfactual=False,
                         max_channels=16, generator=None):
    """One CAM-family method's maps at input resolution, not normalized: (N, H, W), or
    (N, T, H, W) for targets (N, T) (the methods in ``SHARED_PASSES`` alone).

    Args:
        model: any classifier in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N,) class per image, or (N, T).
        layer: a layer name (see ``model.nets.layers``); method: one of ``CAM_METHODS``.
        batch_size: masked or ablated variants per forward pass (scorecam, ablationcam).
        smooth: average a gradient method over this many noisy copies (0: off; SmoothGrad,
            Smilkov et al. 2017, Eq. 3).
        noise: SmoothGrad's sigma as a fraction of each image's value range.
        upsample: ``bilinear`` or ``nearest``.
        aug_smooth: the mean map over flipped and rescaled copies, each brought back
            (``model.attribution.test_time``).
        eigen_smooth: the per-channel terms (w_k A_k) projected on their first principal
            component instead of summed (:func:`combine_terms`).
        counterfactual: the gradient methods with the gradients of -y^c (Selvaraju et al.
            2017, sec. 3): the regions whose removal would raise the class score.
        max_channels: channels scored by faster-scorecam.
        generator: for the SmoothGrad noise.
    """
    if aug_smooth:
        def one_view(images, view_targets):
            return class_activation_map(
                model, images, view_targets, layer=layer, method=method,
                batch_size=batch_size, smooth=smooth, noise=noise, upsample=upsample,
                eigen_smooth=eigen_smooth, counterfactual=counterfactual,
                max_channels=max_channels, generator=generator)
        return test_time_augmented(one_view, inputs, targets)
    options = dict(eigen_smooth=eigen_smooth, counterfactual=counterfactual)
    if smooth and method in GRADIENT_METHODS:
        count = len(inputs)
        span = (inputs.flatten(1).amax(1) - inputs.flatten(1).amin(1))[:, None, None, None]
        copies = inputs.repeat_interleave(smooth, 0)  # (N * smooth, C, H, W)
        sigma = noise * span.repeat_interleave(smooth, 0)
        draws = torch.randn(copies.shape, generator=generator).to(inputs.device)
        maps = layer_map(method, model, copies + sigma * draws, targets.repeat_interleave(
            smooth, 0), layer, batch_size, max_channels, **options)
        maps = maps.view(count, smooth, *maps.shape[1:]).mean(1)
    else:
        maps = layer_map(method, model, inputs, targets, layer, batch_size, max_channels,
                         **options)
    if maps.shape[-1] != inputs.shape[-1]:
        leading = maps.shape[:-2]  # (N,) or (N, T)
        maps = resize_maps(maps.flatten(0, -3), inputs.shape[-1], upsample).unflatten(0, leading)
    return maps


def cam_method(name, *, paper, equation, cost, gradients=False, shares_passes=False, needs=(),
               defaults=None, evaluated=False):
    """Register a CAM-family method whose map is ``map_function(CamContext)`` (N, h, w); with
    ``shares_passes``, (N, T, h, w) for the context's targets (N, T).

    The registry entry (``model.attribution.registry``) computes :func:`class_activation_map`:
    the map upsampled to the input, optionally SmoothGrad-averaged, not yet normalized.
    """
    def add(map_function):
        METHOD_MAPS[name] = map_function
        if gradients:
            GRADIENT_METHODS.add(name)
        if shares_passes:
            SHARED_PASSES.add(name)
        register(name, paper=paper, equation=equation, family="cam", cost=cost,
                 display="ReLU'd class evidence, upsampled to the input",
                 defaults={**OPTIONS, **(GRADIENT_OPTIONS if gradients else {}),
                           **(defaults or {})},
                 needs={"layer", *(["gradients"] if gradients else []), *needs},
                 evaluated=evaluated, shares_passes=shares_passes,
                 function=functools.partial(class_activation_map, method=name))
        return map_function
    return add


@cam_method("cam", paper="Zhou et al. 2016", equation="Eq. 2: w_k = W[c, k]",
            cost="1 forward", shares_passes=True, needs={"gap-linear"}, evaluated=True)
def _cam(ctx):
    return ctx.combine(weighted_terms(
        cam_weights(ctx.model, ctx.activations, ctx.logits, ctx.targets), ctx.activations))


@cam_method("gradcam", paper="Selvaraju et al. 2017",
            equation="Eq. 1-2: w_k = mean_ij dy^c/dA_kij", cost=ONE_BACKWARD, gradients=True,
            evaluated=True)
def _gradcam(ctx):
    return ctx.combine(weighted_terms(ctx.gradients.mean((2, 3)), ctx.activations))


@cam_method("gradcam++", paper="Chattopadhay et al. 2018",
            equation="Eq. 19: w_k = sum_ij a_kij ReLU(g_kij)", cost=ONE_BACKWARD,
            gradients=True, evaluated=True)
def _gradcam_plus_plus(ctx):
    return ctx.combine(weighted_terms(gradcam_plus_plus_weights(ctx.activations, ctx.gradients),
                                      ctx.activations))


@cam_method("xgradcam", paper="Fu et al. 2020",
            equation="w_k = sum_ij (A_kij / sum_ab A_kab) g_kij", cost=ONE_BACKWARD,
            gradients=True)
def _xgradcam(ctx):
    shares = ctx.activations / (ctx.activations.sum((2, 3), keepdim=True) + EPSILON)
    return ctx.combine(weighted_terms((shares * ctx.gradients).sum((2, 3)), ctx.activations))


@cam_method("hirescam", paper="Draelos & Carin 2020", equation="M = ReLU(sum_k g_k * A_k)",
            cost=ONE_BACKWARD, gradients=True)
def _hirescam(ctx):
    return ctx.combine(ctx.gradients * ctx.activations)


@cam_method("layercam", paper="Jiang et al. 2021", equation="Eq. 5: M = ReLU(sum_k ReLU(g_k) A_k)",
            cost=ONE_BACKWARD, gradients=True, evaluated=True)
def _layercam(ctx):
    return ctx.combine(F.relu(ctx.gradients) * ctx.activations)


@cam_method("guided-gradcam", paper="Selvaraju et al. 2017",
            equation="sec. 3.1: Grad-CAM upsampled times guided backprop",
            cost="1 forward + 1 backward, twice", gradients=True)
def _guided_gradcam(ctx):
    guided = input_gradient(ctx.model, ctx.inputs, ctx.targets, "guided", ctx.counterfactual)
    cam = resize_maps(_gradcam(ctx), ctx.inputs.shape[-1])  # (N, H, W)
    return (guided * cam[:, None]).abs().amax(1)  # strongest channel of the product


@cam_method("scorecam", paper="Wang et al. 2020",
            equation="Eq. 6-8: w_k = softmax(f(x * H_k))_c, H_k = A_k upsampled, min-max "
                     "normalized", cost="1 + K forward (K channels)", shares_passes=True,
            evaluated=True)
def _scorecam(ctx):
    return ctx.combine(weighted_terms(score_weights(
        ctx.model, ctx.inputs, ctx.activations, ctx.targets, ctx.batch_size), ctx.activations))


@cam_method("faster-scorecam", paper="Wang et al. 2020 (faster variant)",
            equation="Score-CAM on the max_channels channels of highest variance",
            cost="1 + max_channels forward", shares_passes=True, defaults={"max_channels": 16})
def _faster_scorecam(ctx):
    top = min(ctx.max_channels, ctx.activations.shape[1])
    channels = ctx.activations.flatten(2).var(2).topk(top, dim=1).indices
    return ctx.combine(weighted_terms(score_weights(
        ctx.model, ctx.inputs, ctx.activations, ctx.targets, ctx.batch_size, channels),
        ctx.activations))


@cam_method("ablationcam", paper="Desai & Ramaswamy 2020",
            equation="Eq. 3: w_k = (y^c - y^c with A_k zeroed) / y^c",
            cost="1 forward + K passes through the layers after the layer (K channels)",
            shares_passes=True)
def _ablationcam(ctx):
    return ctx.combine(weighted_terms(ablation_weights(
        ctx.model, ctx.layer, ctx.inputs, ctx.activations, ctx.logits, ctx.targets,
        ctx.batch_size), ctx.activations))


@cam_method("eigencam", paper="Muhammad & Yeasin 2020",
            equation="A projected on its first principal component", cost="1 forward",
            shares_passes=True)
def _eigencam(ctx):
    # The map does not depend on the class: every target gets the same one. Its terms are the
    # activations themselves, so eigen_smooth changes nothing.
    return eigen_map(ctx.activations)[:, None].repeat(1, ctx.targets.shape[1], 1, 1)


CAM_METHODS = tuple(METHOD_MAPS)  # the CAM family's names, in registration order
