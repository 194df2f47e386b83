"""Receptive fields computed from the layer stack (kernel, stride, padding of every layer).

For a chain of layers, with j the distance in input pixels between neighbouring units, r the
receptive field size and s the input coordinate of unit 0's centre (Araujo et al. 2019, Eq. 1-3
in their recurrence form):

    j_out = j_in * stride
    r_out = r_in + (kernel - 1) * dilation * j_in
    s_out = s_in + ((kernel - 1) * dilation / 2 - padding) * j_in
"""
from dataclasses import dataclass

import torch.nn as nn


@dataclass(frozen=True)
class ReceptiveField:
    """Receptive field of the units of one layer, in input pixels."""

    size: float
    jump: float
    start: float

    def box(self, row, col, image_size):
        """(top, left, bottom, right) pixel bounds, bottom/right exclusive, clipped to the image,
        of the receptive field of the unit at (row, col)."""
        half = (self.size - 1) / 2
        center_y, center_x = self.start + row * self.jump, self.start + col * self.jump
        top, left = max(0, int(round(center_y - half))), max(0, int(round(center_x - half)))
        bottom = min(image_size, int(round(center_y + half)) + 1)
        right = min(image_size, int(round(center_x + half)) + 1)
        return top, left, bottom, right


def _pair_first(value):
    return value[0] if isinstance(value, tuple) else value


def receptive_field(modules):
    """Receptive field of the output units of a chain of modules (conv, pool, BN, ReLU).

    Args:
        modules: iterable of modules in forward order; only convolutions and pools change the
            receptive field (square kernels assumed, as in this project's nets).
    """
    size, jump, start = 1.0, 1.0, 0.0
    for module in modules:
        if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            kernel = _pair_first(module.kernel_size)
            stride = _pair_first(module.stride)
            padding = _pair_first(module.padding)
            dilation = _pair_first(getattr(module, "dilation", 1))
            start += ((kernel - 1) * dilation / 2 - padding) * jump
            size += (kernel - 1) * dilation * jump
            jump *= stride
    return ReceptiveField(size, jump, start)


def layer_receptive_field(model, layer):
    """The receptive field of the units of ``layer`` (a conv name: its block's output), as the
    traced pass followed it (``model.nets.anatomy``): along the largest field of every path, so
    a shortcut beside the main path (ResNet's 1x1 ``downsample``) does not shrink it, on any
    net."""
    from model.nets.anatomy import anatomy  # anatomy imports ReceptiveField from here
    from model.nets.layers import block_end

    return anatomy(model).layers[block_end(model, layer)].field
