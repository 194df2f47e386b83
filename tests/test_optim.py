"""The airbench pieces of the CIFAR-10 recipe, each against a property only a correct
implementation has: BatchNorm biases decay at the weights' rate per step, flips alternate,
test-time views are the shifted and mirrored images, and identity-initialized convs pass their
input through."""
import dataclasses

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model.data.augmentation import alternating_flips
from model.nets.architectures import build_model
from model.nets.layers import block_end
from model.data.datasets import load_dataset
from model.training.loop import identity_init, prepare_model, renormalize_filters, train_one_epoch
from model.training.optim import (NEWTON_SCHULZ_COEFFICIENTS, learning_rate_at, make_optimizer,
                                  orthogonalize, set_learning_rate)
from model.training.recipes import RECIPES, Recipe
from model.training.views import view_logits

CIFAR = RECIPES[("cifar10", "vgg")]


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).double()


def batches(count=6):
    generator = torch.Generator().manual_seed(1)
    return [(torch.randn(8, 3, 5, 5, generator=generator, dtype=torch.double),
             torch.randint(0, 3, (8,), generator=generator)) for _ in range(count)]


def train_steps(net, optimizer, data, logit_multiplier=1.0):
    for step, (inputs, labels) in enumerate(data):
        set_learning_rate(optimizer, learning_rate_at(step, len(data), 0.5, 0.3, "linear", 0.2))
        loss = F.cross_entropy(net(inputs) * logit_multiplier, labels, label_smoothing=0.2)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def test_norm_biases_learn_faster_and_decay_at_the_weights_rate_per_step():
    """airbench's bias_scaler: BatchNorm biases step 64x as far for the same gradient, yet
    without a gradient (zero loss slope) they shrink by exactly the weights' factor."""
    recipe = Recipe(epochs=1, batch_size=8, lr=0.5, weight_decay=1e-2, momentum=0.85,
                    norm_bias_lr_scale=64)
    net = tiny_net()
    with torch.no_grad():
        net[1].bias.fill_(0.3)
    start = {name: value.clone() for name, value in net.named_parameters()}
    train_steps(net, make_optimizer(net, 0.5, 1e-2, recipe), batches(3), logit_multiplier=0.0)
    shrink_weight = net[0].weight / start["0.weight"]
    shrink_bias = net[1].bias / start["1.bias"]
    assert torch.allclose(shrink_weight, shrink_weight.flatten()[0], atol=1e-12)
    assert torch.allclose(shrink_bias, shrink_weight.flatten()[0], atol=1e-12)
    assert shrink_bias[0] < 1 - 1e-3 and torch.equal(net[1].weight, start["1.weight"])

    plain, fast = tiny_net(), tiny_net()
    train_steps(plain, make_optimizer(plain, 0.5, 0.0), batches(1))
    train_steps(fast, make_optimizer(fast, 0.5, 0.0, dataclasses.replace(recipe,
                                                                         weight_decay=0.0)),
                batches(1))
    moved_plain = plain[1].bias - tiny_net()[1].bias
    moved_fast = fast[1].bias - tiny_net()[1].bias
    assert torch.allclose(moved_fast, 64 * moved_plain * (1 + 0.85) / (1 + 0.9), atol=1e-12)


def test_flips_alternate_between_epochs_and_follow_the_seed():
    first, second, third = (alternating_flips(1000, seed=3, epoch=e) for e in (1, 2, 3))
    assert torch.equal(second, ~first) and torch.equal(third, first)
    assert 400 < int(first.sum()) < 600
    assert not torch.equal(alternating_flips(1000, seed=4, epoch=1), first)


def test_test_time_views_are_the_mirrored_and_shifted_images():
    """flip-translate = 1/2 mean(image, mirror) + 1/4 each for the image shifted one pixel
    down-right and up-left with a reflected border, built here pixel by pixel."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(2 * 4 * 4, 3)).double()
    images = torch.randn(2, 2, 4, 4, dtype=torch.double)

    def reflect(index):
        return abs(index) if index < 0 else (6 - index if index > 3 else index)

    def shifted(dy):
        out = torch.empty_like(images)
        for i in range(4):
            for j in range(4):
                out[..., i, j] = images[..., reflect(i - dy), reflect(j - dy)]
        return out

    def mirror_mean(x):
        return 0.5 * (linear(x) + linear(x.flip(3)))

    expected = 0.5 * mirror_mean(images) + 0.25 * (mirror_mean(shifted(1)) +
                                                   mirror_mean(shifted(-1)))
    assert torch.allclose(view_logits(linear, images, "flip-translate"), expected, atol=1e-12)
    assert torch.allclose(view_logits(linear, images, "flip"), mirror_mean(images), atol=1e-12)
    assert torch.equal(view_logits(linear, images, "image"), linear(images))


def test_the_accuracy_with_views_comes_with_the_image_alones_from_the_same_passes():
    """loss_and_accuracy with views: the image-alone loss and accuracy of a plain call plus the
    accuracy of the views' mean logits, from 6 passes per batch (the image is a view), not 7."""
    from model.data.datasets import DATASET_INFO, ImageDataset
    from model.training.views import loss_and_accuracy

    class Float64(nn.Module):  # the batches come in float32; compute in float64
        def forward(self, inputs):
            return inputs.double()

    torch.manual_seed(0)
    net = nn.Sequential(Float64(), nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 10)).double()
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    info = dataclasses.replace(DATASET_INFO["cifar10"], image_size=8)
    dataset = ImageDataset(info, images, torch.randint(0, 10, (12,)))
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    alone = loss_and_accuracy(net, dataset, "cpu", batch_size=5)
    assert len(calls) == 3 and "tta_accuracy" not in alone
    calls.clear()
    both = loss_and_accuracy(net, dataset, "cpu", batch_size=5, views="flip-translate")
    assert len(calls) == 3 * 6
    assert both["test_loss"] == pytest.approx(alone["test_loss"], abs=1e-12)
    assert both["test_accuracy"] == alone["test_accuracy"]
    expected = (view_logits(net, info.normalize(images), "flip-translate").argmax(1) ==
                dataset.labels)
    assert both["tta_accuracy"] == pytest.approx(expected.double().mean().item(), abs=1e-12)


def test_identity_initialized_convs_pass_their_input_channels_through():
    conv = nn.Conv2d(3, 5, 3, padding=1, bias=False).double()
    identity_init(conv)
    images = torch.randn(2, 3, 6, 6, dtype=torch.double)
    assert torch.equal(conv(images)[:, :3], images)
    assert conv.weight[3:].abs().sum() > 0  # the other filters keep their random start


def test_the_cifar10_net_pools_before_normalizing_and_prepares_as_the_recipe_says():
    net = build_model("vgg", 3, 10, 32, CIFAR.vgg_plan)
    names = [name for name, _ in net.named_children()]
    assert names[:6] == ["conv1", "relu1", "conv2", "pool1", "bn2", "relu2"]
    assert block_end(net, "conv2") == "relu2" and block_end(net, "conv3") == "relu3"

    class Images:  # the two things prepare_model reads from a training split
        images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
        info = type("Info", (), {"normalize": staticmethod(lambda x: x.float() / 255 - 0.5)})

        def __len__(self):
            return 64

    prepare_model(net, CIFAR, Images(), "cpu")
    assert all(not m.weight.requires_grad for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    probe = torch.randn(1, 64, 8, 8)
    assert torch.equal(F.conv2d(probe, net.conv3.weight, padding=1)[:, :64], probe)
    optimizer = make_optimizer(net, CIFAR.lr, CIFAR.weight_decay, CIFAR)
    trained = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert id(net.bn2.weight) not in trained and id(net.conv1.weight) not in trained
    assert id(net.conv1.bias) in trained  # the whitening stem's shift, in place of a BatchNorm


def test_spread_samples_every_class_of_a_sorted_split():
    from model.data.datasets import DATASET_INFO, ImageDataset

    labels = torch.arange(10).repeat_interleave(100)  # sorted by class, as class folders are
    split = ImageDataset(DATASET_INFO["cifar10"], torch.zeros(1000, 3, 32, 32, dtype=torch.uint8),
                         labels)
    sample = split.spread(200)
    assert len(sample) == 200 and torch.equal(sample.labels.bincount(), torch.full((10,), 20))
    assert split.spread(None) is split and split.spread(5000) is split


def test_warm_up_can_start_above_zero():
    rates = [learning_rate_at(step, 100, 1.5, 0.23, "linear", 0.2) for step in range(100)]
    assert rates[0] == pytest.approx(1.5 * (0.2 + 0.8 / 23))
    assert rates[22] == pytest.approx(1.5) and max(rates) == pytest.approx(1.5)


ALEXNET_PHOTOS = RECIPES[("imagefolder", "alexnet")]


def test_he_initialization_keeps_a_relu_layers_variance_and_starts_from_small_logits():
    """He et al. 2015, eq. 10: Var w = 2 / fan-in, so E[y^2] of a conv's output equals E[x^2]
    of its ReLU-ed input; checked on AlexNet's drawn weights and one layer's signal."""
    net = build_model("alexnet", 3, 10, 64)
    prepare_model(net, dataclasses.replace(ALEXNET_PHOTOS, channels_last=False), None, "cpu")
    layers = [m for m in net.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    # conv1 starts small instead (the recipe's first_conv_std, 1e-3)
    assert layers[0].weight.std().item() == pytest.approx(ALEXNET_PHOTOS.first_conv_std, rel=0.1)
    assert ALEXNET_PHOTOS.first_conv_std < 0.01
    for layer in layers[1:-1]:
        fan_in = layer.weight[0].numel()
        assert layer.weight.var().item() == pytest.approx(2 / fan_in, rel=0.1)
        assert not layer.bias.any()
    assert layers[-1].weight.std().item() == pytest.approx(0.01, rel=0.1)
    conv = layers[2]  # 192 -> 384 channels, 3x3
    generator = torch.Generator().manual_seed(0)
    inputs = torch.relu(torch.randn(8, conv.in_channels, 12, 12, generator=generator))
    with torch.no_grad():
        outputs = F.conv2d(inputs, conv.weight, padding=1)[..., 1:-1, 1:-1]  # no border
    # E[y^2] = fan-in Var w E[x^2] = 2 E[x^2], E[x^2] = 1/2 for a rectified N(0, 1)
    assert outputs.pow(2).mean().item() == pytest.approx(1.0, rel=0.1)


def test_adamw_decays_only_the_weights_decoupled_from_the_gradient():
    """AdamW (Loshchilov & Hutter 2019, Alg. 2 line 12): with a zero gradient a weight
    shrinks by exactly lr x decay per step; biases do not decay."""
    net = tiny_net()
    optimizer = make_optimizer(net, 0.1, 0.05, dataclasses.replace(CIFAR, optimizer="adamw",
                                                                 norm_bias_lr_scale=1.0))
    assert isinstance(optimizer, torch.optim.AdamW)
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for (name, p), old in zip(net.named_parameters(), before):
        factor = 1 - 0.1 * 0.05 if p.ndim > 1 else 1.0
        assert torch.allclose(p, old * factor, rtol=0, atol=1e-15), name


def test_filters_above_the_radius_are_scaled_onto_it_and_the_rest_left_alone():
    """Zeiler & Fergus 2014, sec. 3: a conv filter whose RMS exceeds the radius is rescaled to
    RMS = radius (its direction kept); smaller filters and linear layers are untouched."""
    generator = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        net[0].weight.copy_(torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.float64)
                            * torch.tensor([0.02, 0.05, 0.3, 1.0]).view(4, 1, 1, 1))
        net[3].weight.mul_(100)
    net = net.double()
    before = net[0].weight.detach().clone()
    linear = net[3].weight.detach().clone()
    rms = before.pow(2).mean(dim=(1, 2, 3)).sqrt()
    renormalize_filters(net, 0.1)
    after = net[0].weight.detach()
    after_rms = after.pow(2).mean(dim=(1, 2, 3)).sqrt()
    for unit in range(4):
        if rms[unit] > 0.1:
            assert after_rms[unit].item() == pytest.approx(0.1, rel=1e-12)
            cosine = F.cosine_similarity(after[unit].flatten(), before[unit].flatten(), dim=0)
            assert cosine.item() == pytest.approx(1.0, rel=1e-12)
        else:
            assert torch.equal(after[unit], before[unit])
    assert (rms > 0.1).sum() >= 2 and (rms < 0.1).sum() >= 1  # both cases were exercised
    assert torch.equal(net[3].weight, linear)


def test_every_training_step_ends_with_the_filters_inside_the_radius():
    """The recipe's ``filter_rms_radius`` is applied after each optimizer step, as Zeiler &
    Fergus do: after an epoch of a large learning rate no conv filter's RMS exceeds it, while
    without the radius some do."""
    train_set = load_dataset("shapes", "train").subset(64)

    def largest_filter_rms(radius):
        torch.manual_seed(0)
        recipe = dataclasses.replace(RECIPES[("shapes", "simple")], filter_rms_radius=radius)
        net = build_model("simple", 3, 10, 32)
        optimizer = make_optimizer(net, 0.5, 0.0, recipe)
        train_one_epoch(net, optimizer, train_set, epoch=1, epochs=1, seed=0, batch_size=32,
                        peak_lr=0.5, device="cpu", progress=False, recipe=recipe)
        return max(m.weight.detach().pow(2).mean(dim=(1, 2, 3)).sqrt().max().item()
                   for m in net.modules() if isinstance(m, nn.Conv2d))

    radius = 0.9 * largest_filter_rms(None)
    assert largest_filter_rms(radius) <= radius * (1 + 1e-6)


def scalar_newton_schulz(values, steps):
    """The quintic Newton-Schulz polynomial applied to numbers: what ``orthogonalize`` must do
    to each singular value of its (normalized) input, since an odd matrix polynomial of X keeps
    X's singular vectors and maps each singular value alone."""
    a, b, c = NEWTON_SCHULZ_COEFFICIENTS
    for _ in range(steps):
        values = a * values + b * values ** 3 + c * values ** 5
    return values


@pytest.mark.parametrize("shape", [(6, 15), (15, 6), (8, 8)])
def test_orthogonalize_keeps_the_singular_vectors_and_maps_each_singular_value(shape):
    """Two formulations: the matrix iteration (through X X^T on the wide side) against the
    scalar polynomial on the singular values of M / ||M||_F, in float64."""
    generator = torch.Generator().manual_seed(0)
    matrix = torch.randn(*shape, generator=generator, dtype=torch.double)
    left, singular, right_t = torch.linalg.svd(matrix, full_matrices=False)
    for steps in (1, 3, 5):
        result = orthogonalize(matrix, steps=steps)
        expected = left @ torch.diag(scalar_newton_schulz(singular / matrix.norm(), steps)) @ right_t
        assert result.shape == matrix.shape
        assert torch.allclose(result, expected, atol=1e-10)
    # Enough steps bring every singular value into the band around 1 that the iteration aims at.
    final = torch.linalg.svdvals(orthogonalize(matrix, steps=10))
    assert final.min() > 0.6 and final.max() < 1.25


def muon_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Conv2d(4, 5, 3, padding=1, bias=False), nn.BatchNorm2d(5), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3)).double()


MUON = Recipe(epochs=1, batch_size=8, lr=0.5, weight_decay=1e-2, momentum=0.85,
              norm_bias_lr_scale=64, optimizer="muon", muon_lr=0.2, muon_momentum=0.6)


def test_muon_steps_everything_but_the_filters_exactly_as_sgd():
    """Given the same gradients, the SGD groups of ``Muon`` (BatchNorm, Linear, the 64x biases)
    follow PyTorch's SGD with Nesterov momentum and weight decay step for step; the conv
    filters do not."""
    net, reference = muon_net(), muon_net()
    optimizer = make_optimizer(net, 0.5, 1e-2, MUON)
    sgd = make_optimizer(reference, 0.5, 1e-2, dataclasses.replace(MUON, optimizer="sgd"))
    generator = torch.Generator().manual_seed(3)
    for step in range(3):
        for mine, theirs in zip(net.parameters(), reference.parameters()):
            mine.grad = torch.randn(mine.shape, generator=generator, dtype=torch.double)
            theirs.grad = mine.grad.clone()
        for each in (optimizer, sgd):
            set_learning_rate(each, learning_rate_at(step, 3, 0.5, 0.3, "linear", 0.2))
            each.step()
    for (name, value), expected in zip(net.named_parameters(), reference.parameters()):
        if value.ndim == 4:
            assert not torch.allclose(value, expected, atol=1e-3), name
        else:
            assert torch.allclose(value, expected, atol=1e-12), name


def test_muon_filter_steps_follow_the_orthogonalized_nesterov_momentum():
    """A filter W with gradients G_1, G_2: B_t = mu B_{t-1} + G_t, D_t = G_t + mu B_t, and
    W <- W sqrt(out) / ||W|| - lr orthogonalize(D_t), whatever the gradients' scale (x1000
    gives the same steps: the update's singular values do not depend on it)."""
    results = []
    for scale in (1.0, 1000.0):
        conv = nn.Conv2d(3, 4, 3, bias=False).double()
        torch.manual_seed(1)
        nn.init.normal_(conv.weight)
        start = conv.weight.detach().clone()
        optimizer = make_optimizer(conv, 0.5, 1e-2, MUON)
        generator = torch.Generator().manual_seed(2)
        gradients = [torch.randn(4, 3, 3, 3, generator=generator, dtype=torch.double)
                     for _ in range(2)]
        for gradient in gradients:
            conv.weight.grad = gradient * scale
            optimizer.step()
        results.append(conv.weight.detach().clone())
    buffer, weight = torch.zeros_like(start), start
    for gradient in gradients:
        buffer = 0.6 * buffer + gradient
        direction = (gradient + 0.6 * buffer).reshape(4, -1)
        weight = weight * 2.0 / weight.norm() - 0.2 * orthogonalize(direction).view_as(weight)
    assert torch.allclose(results[0], weight, atol=1e-12)
    assert torch.allclose(results[1], weight, atol=1e-9)


def test_muon_groups_take_the_recipes_learning_rate_through_the_schedule():
    """The filters' group runs at muon_lr x (the schedule / peak); frozen filters are left out."""
    net = muon_net()
    net[0].weight.requires_grad_(False)
    optimizer = make_optimizer(net, 0.5, 1e-2, MUON)
    filters = [group for group in optimizer.param_groups if group["orthogonalize"]]
    assert len(filters) == 1 and filters[0]["params"] == [net[3].weight]
    set_learning_rate(optimizer, 0.25)
    assert filters[0]["lr"] == pytest.approx(0.1) and filters[0]["momentum"] == 0.6
    assert all(group["momentum"] == 0.85 for group in optimizer.param_groups
               if not group["orthogonalize"])
