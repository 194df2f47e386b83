"""BatchNorm folded into the conv before it (model.nets.folding): the twin computes the
model's function, shares what did not change, leaves the model as it was, and keeps every
layer a hook watches.

In float64 with random BatchNorm statistics and affine parts (no layer an identity), the
folded and unfolded nets agree to 1e-10: the only difference is the order of the same
products (W gamma / sqrt(var + eps) applied before the sum, not after).
"""
import pytest
import torch
import torch.nn as nn

from conftest import random_batch_norm_net
from model.attribution.cam import score_weights
from model.evaluation.cost import measure_cost
from model.nets.folding import fold_batch_norm


def batch_norms(model):
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


@pytest.mark.parametrize("arch, size", [("vgg", 32), ("resnet18", 64), ("mobilenet_v2", 64)])
def test_the_twin_computes_the_same_logits_without_batch_norm(arch, size):
    model = random_batch_norm_net(arch, size)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    modules = list(model.modules())
    inputs = torch.randn(3, 3, size, size, dtype=torch.float64)
    twin = fold_batch_norm(model)
    with torch.no_grad():
        expected, folded = model(inputs), twin(inputs)
    assert batch_norms(model) and not batch_norms(twin)  # ResNet's blocks and stem too
    torch.testing.assert_close(folded, expected, rtol=0, atol=1e-10)
    assert list(model.modules()) == modules  # the model is left as it was
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert linears[-1] in list(twin.modules())  # shared, not copied


def test_the_folded_convs_keep_channels_last_weights():
    """What makes the twin fast on the CPU (model.runtime.device.fast_model) stays so."""
    model = random_batch_norm_net("mobilenet_v2", 64).to(memory_format=torch.channels_last)
    convs = [m for m in fold_batch_norm(model).modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(conv.weight.is_contiguous(memory_format=torch.channels_last)
                         for conv in convs)


def test_nothing_to_fold_or_training_gives_the_model_itself():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    assert fold_batch_norm(plain.eval()) is plain
    model = random_batch_norm_net("vgg", 32)
    assert fold_batch_norm(model.train()) is model


def test_a_pair_whose_layer_a_hook_watches_stays():
    model = random_batch_norm_net("vgg", 32)
    seen = []
    model.bn2.register_forward_hook(lambda module, inputs, output: seen.append(output))
    twin = fold_batch_norm(model)
    assert twin.bn2 is model.bn2 and twin.conv2 is model.conv2  # not folded
    assert len(batch_norms(twin)) == 1
    inputs = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(twin(inputs), model(inputs), rtol=0, atol=1e-10)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=1e-10)


def test_a_container_hook_runs_on_the_twin_with_the_same_output():
    model = random_batch_norm_net("mobilenet_v2", 64)
    seen = []
    model.features.register_forward_hook(lambda module, inputs, output: seen.append(output))
    inputs = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    with torch.no_grad():
        fold_batch_norm(model)(inputs)
        model(inputs)
    assert len(seen) == 2
    torch.testing.assert_close(seen[0], seen[1], rtol=0, atol=1e-10)


def test_score_cam_passes_through_the_twin_are_counted():
    """The pass meter hooks the model's output layer, which the twin shares: Score-CAM's
    masked copies still count, 1 pass per channel that is not zero everywhere, plus one for
    those that are."""
    model = random_batch_norm_net("vgg", 32)
    inputs = torch.randn(2, 3, 32, 32, dtype=torch.float64)
    activations = torch.rand(2, 6, 4, 4, dtype=torch.float64)
    activations[0, :2] = 0  # two dead channels of image 0 share one pass
    with measure_cost(model, "cpu") as cost:
        score_weights(model, inputs, activations, torch.tensor([1, 3]), batch_size=4)
    assert cost.forward_images == 2 * 6 - 1
