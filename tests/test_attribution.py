"""The method registry (model.attribution.registry, model.attribution) and the gradient methods of
model.attribution.gradients: Integrated Gradients' completeness, Input x Gradient, and properties
every registered method must have."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from model.attribution import BASELINE, FAMILIES, METHODS
from model.attribution.gradients import input_gradient, integrated_gradients
from model.attribution.registry import NEEDS, get_method
from model.data.datasets import DATASET_INFO
from model.errors import UserError
from model.nets.architectures import build_model

INFO = dataclasses.replace(DATASET_INFO["shapes"], image_size=16)


def vgg(seed=0):
    torch.manual_seed(seed)
    model = build_model("vgg", 3, 6, 16).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(0.0, 0.3)
    return model


def test_integrated_gradients_are_complete_within_one_percent_at_the_default_steps(
        shapes_test_split):
    """Sundararajan et al. 2017, Prop. 1: sum_i IG_i(x) = F(x) - F(x').

    The rule's error is measured against the typical |F(x) - F(x')| of the batch (one image's
    own difference can be near zero): on average below 1%, for any one image below 3%
    (measured at 64 steps: 0.6% and 1.4% here, 0.4% and 1.1% for a briefly trained vgg, 1.0%
    and 2.5% for the 16-filter simple net). float64 and seeded weights, so that only the
    integration rule is measured, the same on every CPU."""
    torch.manual_seed(1)
    model = build_model("vgg", 3, 6, 32).eval().double()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(0.0, 0.3)
    info = DATASET_INFO["shapes"]
    inputs = info.normalize(shapes_test_split.images[:32]).double()
    with torch.no_grad():
        targets = model(inputs).argmax(1)
    maps = METHODS["integrated-gradients"](model, inputs, targets, info=info)  # (N, H, W)
    black = info.normalize(torch.zeros(1, 3, 32, 32)).double().expand_as(inputs)
    with torch.no_grad():
        difference = (model(inputs) - model(black)).gather(1, targets[:, None])[:, 0]
    error = (maps.sum((1, 2)) - difference).abs() / difference.abs().mean()
    assert error.mean() < 0.01 and error.max() < 0.03, error


def test_integrated_gradients_of_a_linear_model_are_exactly_input_times_weight():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).double()
    inputs, targets = torch.randn(2, 3, 4, 4).double(), torch.tensor([2, 0])
    attributions = integrated_gradients(model, inputs, targets, torch.zeros(1, 3, 4, 4).double(),
                                        steps=3, batch_size=5)
    weights = model[1].weight[targets].view(2, 3, 4, 4)
    assert torch.allclose(attributions, inputs * weights, atol=1e-12)


def test_input_x_gradient_is_the_input_times_the_plain_gradient():
    model = vgg(3).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([3, 1])
    maps = METHODS["input-x-gradient"](model, inputs, targets)
    expected = (inputs * input_gradient(model, inputs, targets)).sum(1)
    assert torch.allclose(maps, expected, atol=1e-12)


def test_every_method_is_declared_once_with_what_callers_need():
    assert list(METHODS)[-1] == BASELINE
    families = [method.family for method in METHODS.values()]
    assert families == sorted(families, key=FAMILIES.index)
    for method in METHODS.values():
        assert method.paper and method.equation and method.cost, method.name
        assert method.needs <= set(NEEDS), method.name
    assert get_method("gradcam") is METHODS["gradcam"]
    with pytest.raises(UserError, match="unknown method 'lrp'"):
        get_method("lrp")
    with pytest.raises(UserError, match="needs a layer"):
        METHODS["gradcam"](vgg(), torch.zeros(1, 3, 16, 16), torch.tensor([0]))
    with pytest.raises(UserError, match="needs info"):
        METHODS["occlusion"](vgg(), torch.zeros(1, 3, 16, 16), torch.tensor([0]))


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_maps_each_image_alone_at_input_resolution(name):
    """(N, H, W) finite maps; batched equals one image at a time (float64: no CPU-kernel
    differences), and the model has no hooks left afterwards."""
    model = vgg(4).double()
    inputs, targets = torch.randn(3, 3, 16, 16).double(), torch.tensor([0, 2, 5])
    options = dict(layer="conv4", info=INFO, batch_size=5, patch=4, stride=4, steps=4)
    batched = METHODS[name](model, inputs, targets, **options).detach()
    assert batched.shape == (3, 16, 16) and torch.isfinite(batched).all()
    if name != BASELINE:  # the random map is drawn per call, independent of the images
        for n in range(3):
            single = METHODS[name](model, inputs[n:n + 1], targets[n:n + 1], **options)
            assert torch.allclose(batched[n], single[0].detach(), atol=1e-9), n
    assert not any(module._forward_hooks or module._backward_hooks
                   for module in model.modules())
