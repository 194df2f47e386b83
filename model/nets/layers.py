"""Layers by name on any ``nn.Module``: lookup, and forward hooks that record or replace a
layer's output.

A layer is named as ``model.named_modules()`` names it (``conv3`` here, ``layer4`` or
``features.10`` in torchvision's models). A conv inside an ``nn.Sequential`` (the project's
nets, AlexNet's and VGG's ``features``) stands for its whole conv-BatchNorm-ReLU block, whose
rectified output is the feature map the methods study (:func:`block_end`). Every hook lives
inside a context manager and is removed when the block ends, also when it raises.
"""
from contextlib import contextmanager

import torch.nn as nn

from model.errors import UserError
from model.nets.anatomy import anatomy


def layer_names(model):
    """Names of the model's layers in forward order (``conv1``, ``relu1``, ..., ``fc``)."""
    return [name for name, _ in model.named_children()]


def conv_layer_names(model):
    """The convs, blocks and stages a method can study, in forward order, as the net names them
    (``model.nets.anatomy``: read from one traced pass, on any net).

    On the project's nets the conv layers (``conv1``, ...); on torchvision's, timm's and the
    user's, the convs of plain stacks (AlexNet's ``features.0``), each block (``layer1.0``,
    ``features.3``, ``features.denseblock1``) and each stage after its blocks (``layer4``).
    """
    return list(anatomy(model).main)


def default_layer(model):
    """Every method's default layer: the last spatial map before the head's global pooling
    (``layer4`` of a ResNet, ``features.18`` of MobileNetV2, ``features.denseblock4``)."""
    body = anatomy(model)
    if body.default is None:
        raise UserError(f"{type(model).__name__} has no (C, H, W) feature map before its "
                        "output: there is no layer for the methods to study")
    return body.default


def get_layer(model, name):
    """Return the layer called ``name`` (as ``model.named_modules`` names it).

    Raises:
        UserError: no such layer; the message lists the main layers (``--layer list`` every
            candidate).
    """
    try:
        if name:
            return model.get_submodule(name)
    except AttributeError:
        pass
    valid = dict.fromkeys(layer_names(model) + conv_layer_names(model))
    raise UserError(f"unknown layer '{name}'; valid layers: {', '.join(valid)} "
                    "(--layer list prints every layer with its output shape)")


def first_conv(model, name):
    """(name, module) of the conv layer ``name`` is, or of the first one inside the block."""
    module = get_layer(model, name)
    return next((f"{name}.{inner}" if inner else name, conv)
                for inner, conv in module.named_modules() if isinstance(conv, nn.Conv2d))


def block_end(model, name):
    """Name of the module whose output is the activation ``name`` stands for.

    A conv layer, or a block, stands for its run through the normalizations and activations
    called right after it (conv, a max pool in a pool-first block, BatchNorm, ReLU: the
    rectified output every method studies, the f_k of CAM); any other name stands for its
    own output. Read from the traced pass (``model.nets.anatomy``), so it holds on any net:
    ``features.10`` of AlexNet is ``features.11``, DenseNet's ``features.denseblock4`` its
    ``features.norm5``.
    """
    get_layer(model, name)
    return anatomy(model).run_end.get(name, name)


def clipped_activation(model, name):
    """The name of the clipped activation (``nn.ReLU6``, ``nn.Hardtanh``: min(max(x, lo), hi))
    whose output layer ``name`` stands for (:func:`block_end`; the last module of a block
    such as torchvision's ``Conv2dNormActivation``), or None when its output is not clipped
    from above."""
    end = block_end(model, name)
    module = model.get_submodule(end)
    while isinstance(module, nn.Sequential) and len(module):
        child, module = list(module.named_children())[-1]
        end = f"{end}.{child}"
    return end if isinstance(module, nn.Hardtanh) else None  # nn.ReLU6 is an nn.Hardtanh


def split_at(model, layer):
    """Split a net at a layer of its convolutional part: (body, head), body(x) = A, head(A) =
    logits.

    ``layer`` is resolved with :func:`block_end` (a conv name covers its BatchNorm and ReLU).
    The model itself is not changed: no hooks, nothing to restore.

    Raises:
        UserError: unknown layer, or one outside the convolutional part.
    """
    end = layer_names(model).index(block_end(model, layer)) + 1
    modules = list(model.children())
    if not any(isinstance(m, nn.Conv2d) for m in modules[:end]) or any(
            isinstance(m, (nn.Linear, nn.Flatten)) for m in modules[:end]):
        raise UserError(f"layer '{layer}' is not in the convolutional part; choose one of: "
                        f"{', '.join(conv_layer_names(model))}")
    return nn.Sequential(*modules[:end]), nn.Sequential(*modules[end:])


@contextmanager
def recorded_output(model, name):
    """While the block runs, each forward pass stores the output of layer ``name`` in the
    yielded dict under ``"output"`` (the tensor itself, part of the autograd graph)."""
    record = {}

    def keep(module, inputs, output):
        record["output"] = output

    handle = model.get_submodule(block_end(model, name)).register_forward_hook(keep)
    try:
        yield record
    finally:
        handle.remove()


@contextmanager
def replaced_output(model, name, replacement):
    """While the block runs, layer ``name`` outputs ``replacement`` instead of what it computes
    (Ablation-CAM: the net continues from edited feature maps)."""
    handle = model.get_submodule(block_end(model, name)).register_forward_hook(
        lambda module, inputs, output: replacement)
    try:
        yield
    finally:
        handle.remove()


class _Reached(Exception):
    """Raised by a hook once every wanted layer has given its output: the rest of the forward
    pass is skipped (the autograd graph built so far stays valid)."""


def layer_outputs(model, names, inputs, before=False, reduce=None):
    """The outputs of the layers ``names`` for ``inputs``, running the model only as far as
    the last of them: name -> tensor (part of the autograd graph when gradients are on).

    Args:
        before: return each layer's input instead (a ReLU's input is the pre-activation).
        reduce: ``reduce(name, output)`` is called in the pass as soon as the layer has made
            its output, and kept instead of it: a pass over many layers then holds no output
            longer than the net itself needs it.

    Raises:
        UserError: an unknown name, or a layer the forward pass never reached.
    """
    wanted, record, handles = list(dict.fromkeys(names)), {}, []

    def keep(name):
        def hook(module, args, output):
            value = args[0] if before else output
            record[name] = value if reduce is None else reduce(name, value)
            if len(record) == len(wanted):
                raise _Reached
        return hook

    try:
        for name in wanted:
            module = model.get_submodule(block_end(model, name))
            handles.append(module.register_forward_hook(keep(name)))
        try:
            model(inputs)
        except _Reached:
            pass
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name in wanted if name not in record]
    if missing:
        raise UserError(f"layer '{missing[0]}' is not used by the model's forward pass")
    return record


def layer_output(model, name, inputs, before=False):
    """The output (or with ``before`` the input) of one layer; see :func:`layer_outputs`."""
    return layer_outputs(model, [name], inputs, before)[name]


def as_feature_maps(output, model, name):
    """The output of layer ``name`` checked to be (N, K, h, w) feature maps.

    Raises:
        UserError: the layer's output is no stack of 2-D maps (a Linear or Flatten layer).
    """
    if output is None or output.dim() != 4:
        raise UserError(f"layer '{name}' is not in the convolutional part; choose one of: "
                        f"{', '.join(conv_layer_names(model))}")
    return output


def layer_activations(model, inputs, layers):
    """One forward pass, as far as the last of ``layers``: name -> (N, K, h, w) activations.

    A conv name stands for its block's rectified output (:func:`block_end`): the feature maps
    every method studies. The one place that turns layer outputs into feature maps.

    Raises:
        UserError: a layer whose output is no stack of feature maps (Flatten, Linear).
    """
    outputs = layer_outputs(model, layers, inputs)
    return {name: as_feature_maps(outputs[name], model, name) for name in layers}


def layer_statistics(model, inputs, layers, statistic):
    """One forward pass, as far as the last of ``layers``: name -> ``statistic`` of its
    (N, K, h, w) feature maps (as :func:`layer_activations` gives them), taken in the pass, so
    that no layer's maps outlive the layer after it.

    Raises:
        UserError: a layer whose output is no stack of feature maps (Flatten, Linear).
    """
    return layer_outputs(model, layers, inputs, reduce=lambda name, output: statistic(
        as_feature_maps(output, model, name)))
