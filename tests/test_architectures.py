import pytest
import torch
import torch.nn as nn

from model.data.datasets import DATASET_INFO
from model.errors import UserError
from model.nets.architectures import EXAMPLE_ARCHS, build_model
from model.nets.layers import conv_layer_names, get_layer, layer_names
from model.training.recipes import recipe_for


@pytest.mark.parametrize("arch", EXAMPLE_ARCHS)
@pytest.mark.parametrize("dataset", list(DATASET_INFO))
def test_every_arch_gives_logits_for_every_dataset(arch, dataset):
    info = DATASET_INFO[dataset]
    model = build_model(arch, info.channels, len(info.classes), info.image_size,
                        recipe_for(dataset, arch).vgg_plan).eval()
    inputs = torch.randn(3, info.channels, info.image_size, info.image_size)
    assert model(inputs).shape == (3, len(info.classes))


def test_simple_is_exactly_the_teaching_net():
    model = build_simple_for_mnist()
    assert layer_names(model) == ["conv1", "relu1", "pool1", "conv2", "relu2", "pool2",
                                  "flatten", "fc"]
    assert (model.conv1.in_channels, model.conv1.out_channels) == (1, 8)
    assert (model.conv2.in_channels, model.conv2.out_channels) == (8, 8)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.padding == (1, 1)
    assert model.fc.in_features == 8 * 7 * 7
    assert sum(conv.out_channels for conv in (model.conv1, model.conv2)) == 16


def build_simple_for_mnist():
    return build_model("simple", 1, 10, 28)


@pytest.mark.parametrize("plan", ["small", "wide", "fast"])
def test_vgg_ends_in_global_average_pooling_and_one_linear(plan):
    model = build_model("vgg", 3, 10, 32, plan)
    names = layer_names(model)
    assert names[-3:] == ["gap", "flatten", "fc"]
    assert isinstance(model.gap, nn.AdaptiveAvgPool2d)
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 1
    allowed = (nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
               nn.Flatten, nn.Linear)
    assert all(isinstance(module, allowed) for module in model.children())
    convs = conv_layer_names(model)
    assert convs == [f"conv{i}" for i in range(1, len(convs) + 1)]
    # The fc input is the last conv's channel count: CAM's w_k^c pair one-to-one with maps.
    assert model.fc.in_features == get_layer(model, convs[-1]).out_channels


def test_get_layer_returns_module_and_lists_valid_names_when_wrong():
    model = build_model("vgg", 3, 6, 32)
    assert get_layer(model, "conv2") is model.conv2
    with pytest.raises(UserError) as error:
        get_layer(model, "conv99")
    message = str(error.value)
    assert "conv99" in message and "conv1" in message and "fc" in message


def test_unknown_arch_is_a_user_error():
    with pytest.raises(UserError, match="unknown architecture"):
        build_model("resnet", 3, 10, 32)
