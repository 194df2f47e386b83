"""The CAM family (model.attribution.cam) and class_activation_maps.py: identities of the papers,
brute-force loops, the hook path against the Sequential split, edge cases, CLI."""
import pytest
import torch
import torch.nn as nn

import class_activation_maps
from conftest import stderr_lines
from model.attribution import cam as cams
from model.errors import UserError
from model.nets.architectures import build_model
from model.nets.layers import split_at
from references import compute_cam


def vgg_with_statistics(seed=0, size=16):
    torch.manual_seed(seed)
    model = build_model("vgg", 3, 6, size).eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.3, 0.3)
            module.running_var.uniform_(0.5, 2.0)
            module.bias.data.uniform_(0.0, 0.3)  # keep most units alive after the ReLU
    return model


# Tests comparing two computations of a map run in float64: kernels round differently for each
# batch shape and CPU, and min-max normalization magnifies that (float32: 1e-6 apart, float64:
# 1e-14), so a tight tolerance still holds on every CPU.


def test_gradcam_equals_cam_on_gap_linear_at_the_last_conv():
    """Selvaraju et al. 2017, sec. 3.1: with GAP + Linear, dy^c/dA_kij = w_k^c / Z."""
    model = vgg_with_statistics().double()
    inputs = torch.randn(3, 3, 16, 16).double()
    targets = torch.tensor([0, 3, 5])
    cam = compute_cam(model, inputs, targets, "cam", "conv4")
    gradcam = compute_cam(model, inputs, targets, "gradcam", "conv4")
    assert cam.max() > 0
    assert torch.allclose(cam, gradcam, atol=1e-5)  # 4e-6: the normalization's epsilon
    raw_cam = cams.layer_map("cam", model, inputs, targets, "conv4")
    raw_gradcam = cams.layer_map("gradcam", model, inputs, targets, "conv4")
    area = raw_cam.shape[-1] * raw_cam.shape[-2]
    assert torch.allclose(raw_cam / area, raw_gradcam, atol=1e-12)


def test_gradcam_plus_plus_weights_match_the_closed_form_on_gap_linear():
    """With constant gradients g_k = w_k / Z, Eq. 19 gives w_k = Z relu(g_k) / (2 + g_k sum A)."""
    model = vgg_with_statistics(1).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([1, 4])
    activations, gradients, _ = cams.activations_and_gradients(model, "conv4", inputs, targets)
    area = activations.shape[2] * activations.shape[3]
    g = model.fc.weight[targets] / area  # (N, K)
    expected = area * g.clamp_min(0) / (2 + g * activations.sum((2, 3)))
    expected = torch.where(g != 0, expected, torch.zeros_like(expected))
    weights = cams.gradcam_plus_plus_weights(activations, gradients)
    assert torch.allclose(weights, expected, atol=1e-10)


def test_scorecam_weights_equal_a_per_channel_loop():
    model = vgg_with_statistics(2).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([2, 0])
    body, _ = split_at(model, "conv3")
    with torch.no_grad():
        activations = body(inputs)
        weights = cams.score_weights(model, inputs, activations, targets, batch_size=5)
        for n in range(2):
            for k in range(activations.shape[1]):
                upsampled = nn.functional.interpolate(activations[n, k][None, None], size=16,
                                                      mode="bilinear", align_corners=False)[0, 0]
                low, high = upsampled.min(), upsampled.max()
                mask = (upsampled - low) / (high - low + 1e-8) if high > low else upsampled * 0
                probability = torch.softmax(model(inputs[n:n + 1] * mask), 1)[0, targets[n]]
                assert weights[n, k] == pytest.approx(float(probability), abs=1e-12)


def test_ablationcam_weights_equal_a_per_channel_loop():
    model = vgg_with_statistics(3).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([5, 1])
    body, head = split_at(model, "conv4")  # the reference runs the head on edited maps
    with torch.no_grad():
        activations = body(inputs)
        logits = head(activations)
        weights = cams.ablation_weights(model, "conv4", inputs, activations, logits, targets,
                                        batch_size=7)
        for n in range(2):
            score = logits[n, targets[n]]
            for k in range(activations.shape[1]):
                ablated = activations[n:n + 1].clone()
                ablated[0, k] = 0
                expected = (score - head(ablated)[0, targets[n]]) / (score.abs() + cams.EPSILON)
                assert weights[n, k] == pytest.approx(float(expected), abs=1e-10)


@pytest.mark.parametrize("layer", ["conv2", "conv4", "pool1"])
def test_the_hook_path_equals_the_sequential_split(layer):
    """Activations and gradients through forward hooks equal body(x) and the head's gradient."""
    model = vgg_with_statistics(6).double()
    inputs, targets = torch.randn(3, 3, 16, 16).double(), torch.tensor([0, 2, 5])
    activations, gradients, logits = cams.activations_and_gradients(model, layer, inputs,
                                                                     targets)
    body, head = split_at(model, layer)
    expected = body(inputs).detach().requires_grad_(True)
    expected_logits = head(expected)
    score = expected_logits.gather(1, targets[:, None]).sum()
    expected_gradients = torch.autograd.grad(score, expected)[0]
    assert torch.allclose(activations, expected, atol=1e-12)
    assert torch.allclose(gradients, expected_gradients, atol=1e-12)
    assert torch.allclose(logits, expected_logits, atol=1e-12)
    assert not any(module._forward_hooks for module in model.modules())


def test_hooks_are_removed_when_a_method_raises():
    model = vgg_with_statistics(7)
    with pytest.raises(UserError, match="not in the convolutional part"):
        compute_cam(model, torch.randn(1, 3, 16, 16), torch.tensor([0]), "gradcam",
                         "flatten")
    with pytest.raises(UserError, match="global average pooling"):
        compute_cam(model, torch.randn(1, 3, 16, 16), torch.tensor([0]), "cam", "conv2")
    assert not any(module._forward_hooks or module._backward_hooks
                   for module in model.modules())


def test_cam_applies_only_where_the_layer_feeds_global_average_pooling_and_a_linear():
    model = vgg_with_statistics(8)
    inputs = torch.randn(2, 3, 16, 16)
    assert cams.cam_layer_applies(model, "conv4", inputs)
    assert not cams.cam_layer_applies(model, "conv3", inputs)
    simple = build_model("simple", 3, 6, 16).eval()  # flatten + Linear: no GAP
    assert not cams.cam_layer_applies(simple, "conv2", inputs)


def test_eigencam_recovers_a_rank_one_pattern_with_positive_sign():
    pattern = torch.zeros(4, 4)
    pattern[1:3, 1:3] = 1.0
    loadings = torch.rand(5) + 0.5
    activations = (loadings[:, None, None] * pattern)[None]  # (1, 5, 4, 4)
    result = cams.eigen_map(activations)[0]
    assert torch.equal(result > 0.5 * result.max(), pattern.bool())


@pytest.mark.parametrize("method", cams.CAM_METHODS)
def test_batched_maps_equal_one_image_at_a_time(method):
    model = vgg_with_statistics(4).double()
    inputs, targets = torch.randn(3, 3, 16, 16).double(), torch.tensor([0, 2, 4])
    batched = compute_cam(model, inputs, targets, method, "conv4", batch_size=5)
    assert batched.dtype == torch.float64
    for n in range(3):
        single = compute_cam(model, inputs[n:n + 1], targets[n:n + 1], method, "conv4")
        assert torch.allclose(batched[n], single[0], atol=1e-10, rtol=0), n


@pytest.mark.parametrize("method", cams.CAM_METHODS)
def test_maps_are_finite_and_in_unit_range_even_when_constant(method):
    model = vgg_with_statistics(5)
    for parameter in model.parameters():
        parameter.data.zero_()  # every activation and gradient is constant: raw maps too
    inputs = torch.zeros(2, 3, 16, 16)
    maps = compute_cam(model, inputs, torch.tensor([0, 1]), method, "conv4")
    assert maps.shape == (2, 16, 16) and torch.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1


def test_smoothgrad_is_seeded_and_averages_noisy_copies():
    model = vgg_with_statistics(6)
    inputs, targets = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])

    def smoothed(seed):
        return compute_cam(model, inputs, targets, "gradcam", "conv3", smooth=4,
                                generator=torch.Generator().manual_seed(seed))
    assert torch.equal(smoothed(0), smoothed(0))
    assert not torch.allclose(smoothed(0), compute_cam(model, inputs, targets, "gradcam",
                                                             "conv3"))


def test_cam_on_a_net_without_gap_suggests_gradcam():
    model = build_model("simple", 3, 6, 16).eval()
    with pytest.raises(UserError, match="use gradcam"):
        compute_cam(model, torch.randn(1, 3, 16, 16), torch.tensor([0]), "cam", "conv2")


def test_nearest_upsampling_shows_the_raw_cells():
    model = vgg_with_statistics(7)
    maps = compute_cam(model, torch.randn(1, 3, 16, 16), torch.tensor([0]), "gradcam",
                            "conv4", upsample="nearest")
    assert torch.equal(maps[0, 0, 0], maps[0, 3, 3])  # one 4x4 cell of the 4x4 map


def test_cli_writes_grid_class_maps_and_gallery(trained_shapes_checkpoint, tmp_path):
    code = class_activation_maps.main(["--checkpoint", str(trained_shapes_checkpoint),
                                       "--index", "0", "1", "--method", "gradcam", "scorecam",
                                       "--gallery", "2", "--out", str(tmp_path)])
    assert code == 0
    names = {path.name for path in tmp_path.iterdir()}
    assert {"cam_conv2_grid.png", "cam_conv2_classes_test_0.png"} <= names
    assert any(name.startswith("cam_conv2_gallery_") for name in names)


@pytest.mark.parametrize("argv, message", [(["--method", "cam"], "use gradcam"),
                                           (["--layer", "fc"], "not in the convolutional part"),
                                           (["--layer", "conv9"], "unknown layer")])
def test_cli_bad_input_exits_2_with_one_line(trained_shapes_checkpoint, tmp_path, capsys, argv,
                                             message):
    code = class_activation_maps.main(["--checkpoint", str(trained_shapes_checkpoint),
                                       "--out", str(tmp_path), "--gallery", "0", *argv])
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and message in lines[0]


def test_scorecam_runs_one_pass_per_image_for_all_its_dead_channels():
    """Every map that is zero everywhere masks the image to zeros: the weights are those of
    one pass per channel (the per-channel loop's), from one pass per image for the dead ones."""
    model = vgg_with_statistics(2).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([[2, 4], [0, 1]])
    body, _ = split_at(model, "conv3")
    with torch.no_grad():
        activations = body(inputs)
        activations[0, [1, 4, 7]] = 0  # dead on the first image
        activations[1, [2, 4]] = 0  # and on the second
        live = int((activations[1].flatten(1) != 0).sum(1).argmax())
        activations[1, live, 0, 0] = 0  # a zero in a live map is no dead map
        channels = activations.shape[1]
        seen = []
        handle = model.register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
        weights = cams.score_weights(model, inputs, activations, targets, batch_size=5)
        handle.remove()
        dead = (activations.flatten(2) == 0).all(2)  # ours and the net's own
        assert dead[0, [1, 4, 7]].all() and not dead[1, live]
        assert sum(seen) == int((~dead).sum() + dead.any(1).sum())
        for n in range(2):
            for k in range(channels):
                mask = cams.normalize_maps(cams.resize_maps(activations[n, k][None], 16))
                probability = torch.softmax(model(inputs[n:n + 1] * mask[:, None]), 1)[0]
                assert torch.allclose(weights[n, :, k], probability[targets[n]], atol=1e-12)
        assert torch.equal(weights[0, :, 1], weights[0, :, 7])
