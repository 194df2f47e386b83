"""Input-space gradient attributions on any ReLU network, through backward hooks.

The rules differ only in how a ReLU passes the signal down (Springenberg et al. 2015, Fig. 1):

    saliency   R_l = R_{l+1} * [f_l > 0]          the plain gradient dy^c/dx (Simonyan et al. 2014)
    guided     R_l = relu(R_{l+1}) * [f_l > 0]    guided backpropagation (Springenberg et al. 2015)
    deconvnet  R_l = relu(R_{l+1})                the DeconvNet's ReLU (Zeiler & Fergus 2014)

Here every ``nn.ReLU`` of the model gets a backward hook that applies the rule, and every ReLU
called as a function in a ``forward`` (DenseNet's last ``F.relu``, GoogLeNet's and Inception's
``BasicConv2d``), which no module hook sees, is run by a ``TorchFunctionMode`` as a ReLU whose
backward is the rule. They equal the explicit mirror of ``model.units.mirror`` on the project's
nets (tested). The rules are defined on ReLUs: other activations (SiLU, GELU, Hardswish) pass
the plain gradient, as Captum overrides only ReLU modules (:func:`rule_note` says so).

A clipped activation (``nn.Hardtanh``: min(max(f, lo), hi), MobileNet's ``nn.ReLU6`` with lo = 0
and hi = 6) is handled as the ReLU it extends: the DeconvNet and guided rules gate by its
lower clip, [f > lo], and ignore the upper one. Its gradient is zero where f > hi, so by the
gradient's own mask a unit driven past 6 (the very units a top-activation search finds) would
send nothing down; saliency keeps that true gradient.

Integrated Gradients (Sundararajan et al. 2017, Eq. 1) and Input x Gradient (Shrikumar et al.
2017) build on the plain gradient.
"""
from contextlib import contextmanager, nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from model.attribution import shared_passes
from model.attribution.registry import register
from model.errors import UserError
from model.nets.anatomy import RECTIFYING_FUNCTIONS, anatomy
from model.runtime.batching import variant_batch

RULES = ("saliency", "guided", "deconvnet")


RECTIFYING = (nn.ReLU, nn.Hardtanh)  # nn.ReLU6 is an nn.Hardtanh


def _guided(module, grad_input, grad_output):
    return (grad_input[0].clamp(min=0),)  # autograd already masked by [f > 0]


def _deconvnet(module, grad_input, grad_output):
    return (grad_output[0].clamp(min=0),)  # ignores the forward mask


class _GuidedClip(torch.autograd.Function):
    """A clipped activation's output f' = min(max(f, lo), hi), sent back by the guided rule:
    relu(R) [f > lo] straight to its input f (its own gradient, [lo < f < hi], is skipped)."""

    @staticmethod
    def forward(ctx, inputs, outputs, low):
        ctx.save_for_backward(inputs > low)
        return outputs.clone()

    @staticmethod
    def backward(ctx, grad):
        gate, = ctx.saved_tensors
        return grad.clamp(min=0) * gate, None, None


def _guided_clipped(module, inputs, output):
    return _GuidedClip.apply(inputs[0], output, module.min_val)


class _RuleReLU(torch.autograd.Function):
    """max(f, 0) whose backward is a rule's: relu(R) [f > 0] (guided), relu(R) (deconvnet)."""

    @staticmethod
    def forward(ctx, inputs, rule):
        ctx.rule = rule
        ctx.save_for_backward(inputs > 0)
        return inputs.clamp(min=0)

    @staticmethod
    def backward(ctx, grad):
        gate, = ctx.saved_tensors
        grad = grad.clamp(min=0)
        return (grad * gate if ctx.rule == "guided" else grad), None


FUNCTIONAL_RELUS = {torch.relu, torch.relu_, F.relu, torch.Tensor.relu, torch.Tensor.relu_}


class _FunctionalReLURule(TorchFunctionMode):
    """Every ReLU called as a function runs as :class:`_RuleReLU`. Inside an ``nn.ReLU`` too,
    where its module's backward hook then gives the same gradient again (both rules are
    idempotent), so no call needs telling apart. An in-place call writes the result into its
    input, as ``relu_`` does."""

    def __init__(self, rule):
        super().__init__()
        self.rule = rule

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in FUNCTIONAL_RELUS or not args[0].requires_grad:
            return func(*args, **kwargs)
        inplace = func in (torch.relu_, torch.Tensor.relu_) or kwargs.get("inplace") or (
            func is F.relu and len(args) > 1 and args[1])
        result = _RuleReLU.apply(args[0], self.rule)
        return args[0].copy_(result) if inplace else result


# The registered methods that send a signal down by a ReLU rule, and the rule.
RULE_OF_METHOD = {"guided-backprop": "guided", "deconvnet": "deconvnet",
                  "guided-gradcam": "guided"}


def rule_note(model, rule):
    """One line on what ``rule`` does on this net beyond its ReLUs (``model.nets.anatomy``):
    '' on a net of ReLUs."""
    if rule == "saliency":
        return ""
    # sigmoid and hard sigmoid gate channels (squeeze-and-excitation): no unit's activation
    others = sorted(anatomy(model).activation_functions - RECTIFYING_FUNCTIONS
                    - {"sigmoid", "sigmoid_", "hardsigmoid"})
    if not others:
        return ""
    return (f"the {rule} rule is defined on ReLUs: this net's {', '.join(others)} pass the "
            "plain gradient (as in Captum, only ReLUs are overridden)")


@contextmanager
def relu_rule(model, rule):
    """While the block runs, every ``nn.ReLU`` and clipped activation (``nn.Hardtanh``,
    ``nn.ReLU6``) of ``model`` passes gradients by ``rule``.

    In-place activations (torchvision's) are made out-of-place meanwhile, since backward hooks
    need their input; everything is restored when the block ends, also when it raises.
    """
    if rule not in RULES:
        raise UserError(f"unknown rule '{rule}'; choose from {', '.join(RULES)}")
    relus = [module for module in model.modules() if isinstance(module, RECTIFYING)]
    was_inplace = [relu.inplace for relu in relus]
    handles = []
    functional = rule != "saliency" and any(
        name in ("relu", "relu_") for _, name in anatomy(model).functional_activations)
    try:
        for relu in relus:
            relu.inplace = False
            clipped = isinstance(relu, nn.Hardtanh)
            if rule == "guided" and clipped:  # its output rerouted: a forward hook
                handles.append(relu.register_forward_hook(_guided_clipped))
            elif rule == "guided":
                handles.append(relu.register_full_backward_hook(_guided))
            elif rule == "deconvnet":
                handles.append(relu.register_full_backward_hook(_deconvnet))
        with _FunctionalReLURule(rule) if functional else nullcontext():
            yield
    finally:
        for handle in handles:
            handle.remove()
        for relu, inplace in zip(relus, was_inplace):
            relu.inplace = inplace


def input_gradient(model, inputs, targets, rule="saliency", counterfactual=False):
    """dy^c/dx sent back by ``rule``: (N, C, H, W) for inputs (N, C, H, W), targets (N,);
    with ``counterfactual``, that of -y^c (Selvaraju et al. 2017, sec. 3).

    Images are independent, so the scores of the batch are summed and one backward pass
    gives every image's gradient. Inside ``model.attribution.shared_passes.shared_passes`` of
    these inputs and targets, the pass is shared with every other method that needs it.
    """
    passes = shared_passes.lookup(model, inputs, targets)
    if passes is not None:
        return passes.input_gradient(rule, counterfactual, lambda: _rule_gradient(
            model, inputs, targets, rule, counterfactual))
    return _rule_gradient(model, inputs, targets, rule, counterfactual)


def _rule_gradient(model, inputs, targets, rule, counterfactual):
    """:func:`input_gradient`'s own forward and backward pass."""
    with relu_rule(model, rule):
        return target_gradients(model, inputs, targets[:, None], counterfactual)[:, 0]


def integrated_gradients(model, inputs, targets, baseline, steps=64, batch_size=256):
    """Integrated Gradients (Sundararajan et al. 2017, Eq. 1), trapezoidal rule.

    IG_i(x) = (x_i - x'_i) * integral_0^1 dF(x' + a (x - x'))/dx_i da, the integral taken as
    the trapezoidal rule over ``steps`` equal intervals (steps + 1 points, batched
    ``batch_size`` at a time). Completeness: sum_i IG_i = F(x) - F(x') up to the rule's error,
    which falls as 1/steps on a ReLU net (its gradient jumps along the path): at 64 steps
    about 0.5% of |F(x) - F(x')| on average over images, up to 2.5% for one image (measured
    on shapes nets; tests/test_attribution.py). Several targets of an image share the forward
    passes along its path (:func:`target_gradients`).

    Args:
        targets: (N,) one class per image, or (N, T) several.
        baseline: (N, C, H, W) or (1, C, H, W) reference input x'.
    Returns:
        (N, C, H, W) attributions, or (N, T, C, H, W) for targets (N, T).
    """
    several = targets.dim() == 2
    targets = targets if several else targets[:, None]  # (N, T)
    count = len(inputs)
    baseline = baseline.expand_as(inputs)
    alphas = torch.linspace(0, 1, steps + 1, dtype=inputs.dtype, device=inputs.device)
    weights = torch.full_like(alphas, 1.0 / steps)
    weights[[0, -1]] = 0.5 / steps  # trapezoid: half weight at both ends
    # Every (image, alpha) pair, image-major: (N * (steps + 1), C, H, W) in chunks.
    image_index = torch.arange(count, device=inputs.device).repeat_interleave(steps + 1)
    alpha_index = torch.arange(steps + 1, device=inputs.device).repeat(count)
    total = inputs.new_zeros(count, targets.shape[1], *inputs.shape[1:])  # (N, T, C, H, W)
    # At most VARIANT_PIXELS pixels a batch, as the perturbation methods: 256 interpolated
    # 224-px images with their backward graph filled the 24 GB of a 2-core machine.
    batch_size = variant_batch(batch_size, inputs)
    for start in range(0, len(image_index), batch_size):
        part = slice(start, start + batch_size)
        images, points = image_index[part], alpha_index[part]
        alpha = alphas[points][:, None, None, None]
        path = baseline[images] + alpha * (inputs[images] - baseline[images])
        gradients = target_gradients(model, path, targets[images])  # (B, T, C, H, W)
        total.index_add_(0, images, weights[points][:, None, None, None, None] * gradients)
    attributions = (inputs - baseline)[:, None] * total
    return attributions if several else attributions[:, 0]


def target_gradients(model, inputs, targets, counterfactual=False):
    """dy^c/dx for several targets of each image: (B, T, C, H, W) for targets (B, T), from one
    forward pass and one backward pass per target, by whatever ReLU rule is in force
    (:func:`relu_rule`; none: the plain gradient). With ``counterfactual``, that of -y^c: the
    seed is negated, not the result, since the guided and DeconvNet rules clamp the signal."""
    with torch.enable_grad():
        pixels = inputs.detach().requires_grad_(True)
        logits = model(pixels)
        slots = targets.shape[1]
        gradients = []
        for slot in range(slots):
            score = logits.gather(1, targets[:, [slot]]).sum()
            gradients.append(torch.autograd.grad(-score if counterfactual else score, pixels,
                                                 retain_graph=slot < slots - 1)[0])
        return torch.stack(gradients, 1)


def input_times_gradient(model, inputs, targets):
    """Input x Gradient (Shrikumar et al. 2017): x * dy^c/dx, (N, C, H, W)."""
    return inputs * input_gradient(model, inputs, targets)


ONE_BACKWARD = "1 forward + 1 backward"

STRONGEST_CHANNEL = "max over colour channels of |gradient| (Simonyan et al. 2014, sec. 3.1)"

CHANNEL_SUM = "sum over colour channels (signed)"

PIXEL_BASELINES = {"black": 0.0, "gray": 0.5}  # IG references, as pixel values


@register("saliency", paper="Simonyan et al. 2014", equation="sec. 3.1, Eq. 2: dy^c/dx",
          family="gradient", cost=ONE_BACKWARD, display=STRONGEST_CHANNEL, needs={"gradients"})
def saliency_map(model, inputs, targets):
    return input_gradient(model, inputs, targets, "saliency").abs().amax(1)


@register("guided-backprop", paper="Springenberg et al. 2015",
          equation="sec. 3.4: R_l = relu(R_{l+1}) [f_l > 0]", family="gradient",
          cost=ONE_BACKWARD, display=STRONGEST_CHANNEL, needs={"gradients"})
def guided_backprop_map(model, inputs, targets):
    return input_gradient(model, inputs, targets, "guided").abs().amax(1)


@register("deconvnet", paper="Zeiler & Fergus 2014",
          equation="sec. 2.1: R_l = relu(R_{l+1}) (the class score sent down)",
          family="gradient", cost=ONE_BACKWARD, display=STRONGEST_CHANNEL, needs={"gradients"})
def deconvnet_map(model, inputs, targets):
    return input_gradient(model, inputs, targets, "deconvnet").abs().amax(1)


@register("integrated-gradients", paper="Sundararajan et al. 2017",
          equation="Eq. 1: (x - x') * integral_0^1 dF(x' + a (x - x'))/dx da",
          family="gradient", cost="steps + 1 forward + steps + 1 backward", signed=True,
          display=CHANNEL_SUM, defaults={"steps": 64, "baseline": "black", "batch_size": 256},
          needs={"gradients", "info"}, shares_passes=True)
def integrated_gradients_map(model, inputs, targets, *, info, steps, baseline, batch_size):
    """IG from a flat reference image: ``black`` (Sundararajan et al.'s choice for images) or
    ``gray``, in pixel values; F is the class score y^c before the softmax. Targets (N, T)
    share the forward passes along each image's path."""
    if baseline not in PIXEL_BASELINES:
        raise UserError(f"integrated-gradients baseline '{baseline}': choose from "
                        f"{', '.join(PIXEL_BASELINES)}")
    pixels = torch.full((1, info.channels, 1, 1), PIXEL_BASELINES[baseline],
                        dtype=inputs.dtype, device=inputs.device)
    reference = info.normalize(pixels).expand_as(inputs)
    return integrated_gradients(model, inputs, targets, reference, steps, batch_size).sum(-3)


@register("input-x-gradient", paper="Shrikumar et al. 2017",
          equation="x * dy^c/dx (x in the normalized input space: against the mean colour)",
          family="gradient", cost=ONE_BACKWARD, signed=True, display=CHANNEL_SUM,
          needs={"gradients"})
def input_times_gradient_map(model, inputs, targets):
    return input_times_gradient(model, inputs, targets).sum(1)
