"""Layers by name on any ``nn.Module``: forward hooks that record or replace a layer's output.

A layer is named as ``model.named_modules()`` names it (``conv3`` here, ``layer4`` or
``features.10`` in torchvision's models). A conv inside an ``nn.Sequential`` (the project's
nets, AlexNet's and VGG's ``features``) stands for its whole conv-BatchNorm-ReLU block, whose
rectified output is the feature map the methods study (``model.architectures.block_end``).
Every hook lives inside a context manager and is removed when the block ends, also when it
raises.
"""
from contextlib import contextmanager

from .architectures import block_end, conv_layer_names
from .errors import UserError


def resolve_layer(model, name):
    """The name of the module whose output ``name`` stands for (``block_end``: a conv in an
    ``nn.Sequential`` stands for its conv-BN-ReLU block).

    Raises:
        UserError: no module of that name; the message lists the valid names.
    """
    return block_end(model, name)


@contextmanager
def recorded_output(model, name):
    """While the block runs, each forward pass stores the output of layer ``name`` in the
    yielded dict under ``"output"`` (the tensor itself, part of the autograd graph)."""
    record = {}

    def keep(module, inputs, output):
        record["output"] = output

    handle = model.get_submodule(resolve_layer(model, name)).register_forward_hook(keep)
    try:
        yield record
    finally:
        handle.remove()


@contextmanager
def replaced_output(model, name, replacement):
    """While the block runs, layer ``name`` outputs ``replacement`` instead of what it computes
    (Ablation-CAM: the net continues from edited feature maps)."""
    handle = model.get_submodule(resolve_layer(model, name)).register_forward_hook(
        lambda module, inputs, output: replacement)
    try:
        yield
    finally:
        handle.remove()


class _Reached(Exception):
    """Raised by a hook once every wanted layer has given its output: the rest of the forward
    pass is skipped (the autograd graph built so far stays valid)."""


def layer_outputs(model, names, inputs, before=False):
    """The outputs of the layers ``names`` for ``inputs``, running the model only as far as
    the last of them: name -> tensor (part of the autograd graph when gradients are on).

    Args:
        before: return each layer's input instead (a ReLU's input is the pre-activation).

    Raises:
        UserError: an unknown name, or a layer the forward pass never reached.
    """
    wanted, record, handles = list(dict.fromkeys(names)), {}, []

    def keep(name):
        def hook(module, args, output):
            record[name] = args[0] if before else output
            if len(record) == len(wanted):
                raise _Reached
        return hook

    try:
        for name in wanted:
            module = model.get_submodule(resolve_layer(model, name))
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
