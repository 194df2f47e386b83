"""The DeconvNet mirror (Zeiler & Fergus 2014, sec. 2.1): a layer's activations sent back to
pixel space through an explicit mirror of the network, with the switches of its max pools.

One activation of a layer is projected back to pixel space: every other activation of that layer
is set to zero, and the signal goes down a mirror of the network built layer by layer:

- max pooling is undone by *unpooling* with the switches (argmax positions) recorded on the
  forward pass (values of overlapping windows that share a switch add up);
- a ReLU passes the signal by the chosen rule;
- a convolution is undone by filtering with its transposed weights;
- BatchNorm in eval mode is the per-channel affine map x -> a x + b, so it passes a * signal;
- a frozen patch-whitening stem (the ``fast`` plan's ``conv1``) is undone by its inverse, the
  colouring of each patch (``PatchWhitening.colouring_filters``), not its transpose: it is
  fixed preprocessing, like the input normalization the projection is shown without, and its
  transpose would amplify the finest pixel patterns a thousandfold.

The three rules differ only in the ReLU (Springenberg et al. 2015, Fig. 1):

    deconvnet  R_l = relu(R_{l+1})                    (Zeiler & Fergus 2014)
    guided     R_l = relu(R_{l+1}) * [f_l > 0]         (Springenberg et al. 2015)
    saliency   R_l = R_{l+1} * [f_l > 0]               (the plain gradient, Simonyan et al. 2014)

where f_l is the ReLU's input on the forward pass. The mirror works where the layers below
the activation are a plain conv / BatchNorm / ReLU / max-pool stack: the project's
``nn.Sequential`` nets and the ``features`` of torchvision's AlexNet and VGG. Residual and
inverted-residual nets (ResNet, MobileNet) have no such mirror; there
:func:`compute_projections` sends the same isolated signal down by the vector-Jacobian
product with every ReLU's rule (``model.gradients.relu_rule``): on a plain stack that is the
mirror exactly (autograd routes a max pool's gradient to its argmax, the switch, and a conv's
through its transposed filters; tested), and through a residual block it adds the two paths.
"""
import itertools

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.attribution.gradients import relu_rule
from model.errors import UserError
from model.nets.architectures import RECTIFIERS, PatchWhitening
from model.nets.layers import (
    as_feature_maps,
    block_end,
    layer_activations,
    layer_names,
    layer_output,
    split_at,
)

RULES = ("deconvnet", "guided", "saliency")

_MIRRORABLE = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d)


def activation_layers(model, name):
    """The modules from the input up to the activation called ``name`` of one of the project's
    ``nn.Sequential`` nets, in forward order (:func:`plain_stack` for any net).

    A conv layer name extends to the BatchNorm and ReLU right after it (``split_at``).

    Raises:
        UserError: unknown name, a layer outside the convolutional part of the net, or one
            above a layer the mirror cannot invert (global average pooling).
    """
    stack = list(split_at(model, name)[0])
    if not all(isinstance(module, _MIRRORABLE) for module in stack):
        mirrorable = [layer for layer, _ in zip(layer_names(model), itertools.takewhile(
            lambda module: isinstance(module, _MIRRORABLE), model.children()))]
        raise UserError(f"layer '{name}' cannot be projected back to pixels: the DeconvNet "
                        "mirrors conv, BatchNorm, ReLU and max-pool layers only; choose one "
                        f"of: {', '.join(mirrorable)}")
    return stack


def plain_stack(model, name):
    """The modules below the activation ``name`` when the mirror can invert them, else None.

    That is a plain chain of conv, BatchNorm, ReLU and max-pool layers from the input: the
    project's ``nn.Sequential`` nets, or the ``features`` of AlexNet and VGG (a net's first
    child, run first). Residual and inverted-residual blocks are no such chain.
    """
    end = block_end(model, name)
    if isinstance(model, nn.Sequential):
        chain, prefix = model, ""
    else:
        first_name, chain = next(model.named_children())
        prefix = first_name + "."
        if not isinstance(chain, nn.Sequential):
            return None
    names = [prefix + child for child, _ in chain.named_children()]
    if end not in names:
        return None
    stack = list(chain.children())[:names.index(end) + 1]
    return stack if all(isinstance(module, _MIRRORABLE) for module in stack) else None


def forward_with_switches(stack, inputs):
    """Run ``inputs`` through ``stack``, recording what the mirror needs.

    Returns:
        activation (N, K, h, w) at the top, and per layer a record: the ReLU's input mask
        [f > 0], or the max pool's switches (indices) and input size.
    """
    records = []
    signal = inputs
    for module in stack:
        if isinstance(module, nn.ReLU):
            records.append(signal > 0)
            signal = F.relu(signal)
        elif isinstance(module, nn.MaxPool2d):
            size = signal.shape[-2:]
            signal, switches = F.max_pool2d(signal, module.kernel_size, module.stride,
                                            module.padding, module.dilation,
                                            ceil_mode=module.ceil_mode, return_indices=True)
            records.append((switches, size))
        else:
            records.append(signal.shape)
            signal = module(signal)
    return signal, records


def project_down(stack, records, signal, rule):
    """Send ``signal`` from the top of ``stack`` down to pixel space through the mirror net.

    Args:
        stack, records: from :func:`activation_layers` and :func:`forward_with_switches`.
        signal: (N, K, h, w) what to project (the isolated activations).
        rule: one of ``RULES``; decides how each ReLU passes the signal.
    Returns:
        (N, C, H, W) projection in input space.
    """
    for module, record in zip(reversed(stack), reversed(records)):
        if isinstance(module, nn.ReLU):
            if rule in ("deconvnet", "guided"):
                signal = F.relu(signal)
            if rule in ("guided", "saliency"):
                signal = signal * record
        elif isinstance(module, nn.MaxPool2d):
            switches, size = record  # each pooled value goes back to its switch; where
            # overlapping windows (AlexNet's 3x3 stride 2) share one, their values add up
            unpooled = signal.new_zeros(*signal.shape[:2], size[0] * size[1])
            unpooled.scatter_add_(2, switches.flatten(2), signal.flatten(2))
            signal = unpooled.view(*signal.shape[:2], *size)
        elif isinstance(module, nn.BatchNorm2d):
            scale = module.weight / torch.sqrt(module.running_var + module.eps)
            signal = signal * scale[None, :, None, None]
        elif isinstance(module, PatchWhitening):
            signal = torch.nn.grad.conv2d_input(record, module.colouring_filters(), signal)
        else:  # Conv2d: filter with the transposed weights (the adjoint of the convolution)
            signal = torch.nn.grad.conv2d_input(record, module.weight, signal, module.stride,
                                                module.padding, module.dilation, module.groups)
    return signal


def modules_below(model, layer):
    """The modules that run before the output ``layer`` stands for (those registered before
    its block ends, which is the forward order of every net here), the block's own included."""
    end = block_end(model, layer)
    below, reached = [], False
    for name, module in model.named_modules():  # pre-order: a block, then its modules
        within = name == end or name.startswith(end + ".")
        if reached and not within:
            break
        reached = reached or within
        below.append(module)
    return below


def projection_rule(model, layer):
    """The rule a figure of top activations projects ``layer``'s units by: the DeconvNet's
    (Zeiler & Fergus 2014), unless no max pool runs below the layer and more than one ReLU
    does: then guided backpropagation, which Springenberg et al. 2015 proposed for nets without
    max pooling. The DeconvNet's ReLU ignores the forward pass, so the max-pool switches are
    all that ties its projection to the image: without them every image's unit goes down to
    the same pattern (on MobileNetV2 the projections of one unit on different photos were
    equal up to scale). Below a single ReLU both rules give the unit's filter."""
    below = modules_below(model, layer)
    pools = any(isinstance(module, nn.MaxPool2d) for module in below)
    rectifiers = sum(isinstance(module, RECTIFIERS) for module in below)
    return "deconvnet" if pools or rectifiers <= 1 else "guided"


def projection_path(model, layer):
    """How :func:`compute_projections` projects from ``layer``, in words for a note."""
    if plain_stack(model, layer) is not None:
        return "the explicit DeconvNet mirror with max-pool switches"
    return ("the ReLU-rule gradient (vector-Jacobian product; the layers below are not a "
            "plain conv / ReLU / max-pool stack)")


@torch.no_grad()
def compute_projections(model, inputs, layer, channels, rule="deconvnet", whole_map=False,
                        batch_size=64):
    """Project chosen channels of a layer back to pixel space, batched over images and channels.

    For each image n and channel k = channels[n, j], the layer's activation A (N, K, h, w) is
    replaced by a signal that is zero except channel k, where it keeps either A's strongest
    value (at its argmax position) or, with ``whole_map``, the whole map A[n, k]. That signal
    goes down the mirror net (:func:`project_down`) where the layers below form a plain stack
    (:func:`plain_stack`), else back by the ReLU rule's vector-Jacobian product
    (``batch_size`` image-channel pairs per backward pass; module docstring).

    Args:
        model: a network in eval mode.
        inputs: (N, C, H, W) normalized images.
        layer: a layer name (conv names include their BatchNorm and ReLU).
        channels: (N, J) channel indices per image.
        rule: ``deconvnet``, ``guided`` or ``saliency``.
        whole_map: project the whole feature map instead of its maximum.

    Returns:
        projections (N, J, C, H, W), activations (N, J, h, w) of the chosen channels.
    """
    if rule not in RULES:
        raise UserError(f"unknown rule '{rule}'; choose from {', '.join(RULES)}")
    stack = (activation_layers(model, layer) if isinstance(model, nn.Sequential)
             else plain_stack(model, layer))
    if stack is not None:
        activation, records = forward_with_switches(stack, inputs)
    else:
        activation = as_feature_maps(layer_output(model, layer, inputs), model, layer)
    count, chosen = channels.shape
    if channels.numel() and (channels.min() < 0 or channels.max() >= activation.shape[1]):
        bad = channels[(channels < 0) | (channels >= activation.shape[1])][0]
        raise UserError(f"--channel {int(bad)}: channel out of range for layer '{layer}' "
                        f"({activation.shape[1]} channels, 0-{activation.shape[1] - 1})")
    selected = activation.gather(1, channels[:, :, None, None].expand(
        -1, -1, *activation.shape[2:]))  # (N, J, h, w)
    kept = selected if whole_map else _keep_maximum(selected)
    # One pass for all (image, channel) pairs: each image's signal repeated J times.
    signal = torch.zeros(count, chosen, *activation.shape[1:], dtype=activation.dtype,
                         device=inputs.device)
    signal.scatter_(2, channels[:, :, None, None, None].expand(-1, -1, 1, *kept.shape[2:]),
                    kept[:, :, None])  # (N, J, K, h, w)
    if stack is not None:
        repeated = [_repeat(record, chosen) for record in records]
        projections = project_down(stack, repeated, signal.flatten(0, 1), rule)
    else:
        projections = _project_by_gradient(model, layer, inputs, signal.flatten(0, 1), rule,
                                           batch_size)
    return projections.view(count, chosen, *inputs.shape[1:]), selected


def _project_by_gradient(model, layer, inputs, signal, rule, batch_size):
    """The vector-Jacobian product signal^T dA/dx with every ReLU passing it by ``rule``, for
    ``signal`` (N * J, K, h, w): each image's J signals in a row."""
    chosen = len(signal) // len(inputs)
    parts = []
    with relu_rule(model, rule), torch.enable_grad():
        for start in range(0, len(signal), batch_size):
            rows = torch.arange(start, min(start + batch_size, len(signal)))
            pixels = inputs[rows // chosen].detach().requires_grad_(True)
            output = layer_output(model, layer, pixels)
            parts.append(torch.autograd.grad(output, pixels, grad_outputs=signal[rows])[0])
    return torch.cat(parts)


def _keep_maximum(maps):
    """Zero every value of each (h, w) map except its (first) maximum."""
    flat = maps.flatten(2)
    keep = torch.zeros_like(flat).scatter_(2, flat.argmax(2, keepdim=True), 1.0)
    return (flat * keep).view_as(maps)


def _repeat(record, times):
    """Repeat a forward record along the batch axis, each image ``times`` times in a row."""
    if isinstance(record, torch.Tensor):
        return record.repeat_interleave(times, dim=0)
    if isinstance(record, tuple) and isinstance(record[0], torch.Tensor):
        switches, size = record
        return switches.repeat_interleave(times, dim=0), size
    return torch.Size([record[0] * times, *record[1:]])  # a conv's input shape


def strongest_channels(model, inputs, layer, top):
    """(N, top) channels of ``layer`` with the highest maximum activation for each image."""
    with torch.no_grad():
        activation = layer_activation(model, layer, inputs)
    top = min(top, activation.shape[1])
    return activation.flatten(2).amax(2).topk(top, dim=1).indices


def layer_activation(model, layer, inputs):
    """The feature maps (N, K, h, w) ``layer`` stands for (a conv name: after its ReLU)."""
    if isinstance(model, nn.Sequential):  # the layer names the mirror checks, as it sees them
        return forward_with_switches(activation_layers(model, layer), inputs)[0]
    return layer_activations(model, inputs, [layer])[layer]
