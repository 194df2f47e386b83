import torch
import torch.nn as nn

from model.nets.architectures import build_model
from model.nets.receptive_field import receptive_field


def gradient_support(stack, image_size, row, col):
    """Brute force: input pixels whose change can move the unit at (row, col) (all weights 1)."""
    for module in stack:
        if isinstance(module, nn.Conv2d):
            nn.init.ones_(module.weight)
    inputs = torch.ones(1, stack[0].in_channels, image_size, image_size, requires_grad=True)
    output = nn.Sequential(*stack)(inputs)
    output[0, 0, row, col].backward()
    return inputs.grad[0].abs().sum(0) > 0


def box_mask(box, image_size):
    top, left, bottom, right = box
    mask = torch.zeros(image_size, image_size, dtype=torch.bool)
    mask[top:bottom, left:right] = True
    return mask


def test_conv_stack_field_equals_gradient_support():
    stack = [nn.Conv2d(1, 1, 3, padding=1, bias=False), nn.Conv2d(1, 1, 5, stride=2,
                                                                   padding=2, bias=False),
             nn.Conv2d(1, 1, 3, padding=1, bias=False)]
    field = receptive_field(stack)
    assert (field.size, field.jump) == (1 + 2 + 4 + 4, 2)
    for row, col in [(0, 0), (3, 5), (7, 7)]:
        expected = gradient_support(stack, 16, row, col)
        assert torch.equal(box_mask(field.box(row, col, 16), 16), expected)


def test_vgg_field_with_average_pools_equals_gradient_support():
    """Max pools route the gradient to one pixel; average pools with the same geometry don't."""
    vgg = build_model("vgg", 1, 10, 32, "small")
    stack = [nn.AvgPool2d(2) if isinstance(m, nn.MaxPool2d) else m for m in vgg.children()
             if isinstance(m, (nn.Conv2d, nn.MaxPool2d))]
    field = receptive_field(stack)
    assert field.jump == 4 and field.size == 1 + 2 + 1 + 2 * 2 + 1 * 2 + 2 * 4 + 2 * 4
    mask = box_mask(field.box(4, 4, 32), 32)
    reduced = [nn.Conv2d(1, 1, m.kernel_size, m.stride, m.padding, bias=False)
               if isinstance(m, nn.Conv2d) else m for m in stack]
    assert torch.equal(mask, gradient_support(reduced, 32, 4, 4))
