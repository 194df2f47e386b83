"""occlusion_sensitivity.py: the batched core against a plain loop, and the CLI."""
import pytest
import torch

import occlusion_sensitivity
from conftest import stderr_lines
from model.attribution import occlusion as occ
from model.data.datasets import DATASET_INFO
from model.errors import UserError
from model.nets.architectures import build_model


def tiny_model():
    """float64: the batched core and the references run other batch shapes, which CPU kernels
    round differently (and differently per CPU); float64 keeps that near 1e-16."""
    torch.manual_seed(0)
    return build_model("simple", 3, 6, 12).eval().double()


def loop_reference(model, inputs, targets, fill, patch, stride):
    """One image and one position at a time, straight from the paper's description."""
    height, width = inputs.shape[2:]
    tops = list(range(0, height - patch + 1, stride))
    lefts = list(range(0, width - patch + 1, stride))
    tops += [height - patch] if tops[-1] != height - patch else []
    lefts += [width - patch] if lefts[-1] != width - patch else []
    probability = torch.zeros(len(inputs), len(tops), len(lefts), dtype=inputs.dtype)
    top_class = torch.zeros(len(inputs), len(tops), len(lefts), dtype=torch.long)
    pixel_sum = torch.zeros(len(inputs), height, width, dtype=inputs.dtype)
    pixel_count = torch.zeros(height, width, dtype=inputs.dtype)
    with torch.no_grad():
        for n in range(len(inputs)):
            base = torch.softmax(model(inputs[n:n + 1]), 1)[0, targets[n]]
            for i, top in enumerate(tops):
                for j, left in enumerate(lefts):
                    image = inputs[n].clone()
                    image[:, top:top + patch, left:left + patch] = \
                        fill[n, :, top:top + patch, left:left + patch]
                    scores = torch.softmax(model(image[None]), 1)[0]
                    probability[n, i, j] = scores[targets[n]]
                    top_class[n, i, j] = scores.argmax()
                    pixel_sum[n, top:top + patch, left:left + patch] += base - scores[targets[n]]
                    if n == 0:
                        pixel_count[top:top + patch, left:left + patch] += 1
    # Pixels that no patch covers (stride > patch) have no drop.
    return probability, top_class, pixel_sum / pixel_count.clamp_min(1)


@pytest.mark.parametrize("patch, stride", [(4, 2), (3, 4), (5, 3)])
def test_batched_core_equals_a_loop_over_positions(patch, stride):
    model = tiny_model()
    inputs = torch.randn(2, 3, 12, 12).double()
    targets = torch.tensor([1, 4])  # a different target per image
    fill = torch.randn(2, 3, 12, 12).double()
    result = occ.compute_occlusion(model, inputs, targets, fill, patch, stride, batch_size=7)
    probability, top_class, pixel_drop = loop_reference(model, inputs, targets, fill, patch,
                                                        stride)
    assert result.probability.dtype == torch.float64
    assert torch.allclose(result.probability, probability, atol=1e-12, rtol=0)
    # Exact: the two best classes of every occluded image here are more than 0.01 apart in
    # probability, which float64 rounding cannot swap.
    assert torch.equal(result.top_class, top_class)
    assert torch.allclose(result.pixel_drop, pixel_drop, atol=1e-12, rtol=0)
    assert torch.allclose(result.drop, result.base_probability[:, None, None] - probability,
                          atol=1e-12, rtol=0)


def test_batch_size_does_not_change_the_result():
    model = tiny_model()
    inputs, fill = torch.randn(3, 3, 12, 12).double(), torch.zeros(3, 3, 12, 12).double()
    targets = torch.tensor([0, 2, 5])
    results = [occ.compute_occlusion(model, inputs, targets, fill, 4, 2, batch_size=size)
               for size in (1, 2, 3, 1000)]
    for result in results[1:]:
        assert torch.allclose(result.probability, results[0].probability, atol=1e-12, rtol=0)


def test_positions_cover_every_pixel_and_reject_a_patch_larger_than_the_image():
    assert occ.patch_positions(12, 5, 3).tolist() == [0, 3, 6, 7]
    assert occ.patch_positions(12, 12, 1).tolist() == [0]
    with pytest.raises(UserError, match="larger than"):
        occ.patch_positions(12, 13, 1)


def test_baselines_fill_the_pixel_values_they_name():
    info = DATASET_INFO["shapes"]
    inputs = info.normalize(torch.rand(2, 3, 8, 8))
    assert torch.allclose(info.denormalize(occ.baseline_images(inputs, info, "gray", 4)),
                          torch.full((2, 3, 8, 8), 0.5))
    assert torch.allclose(info.denormalize(occ.baseline_images(inputs, info, "zero", 4)),
                          torch.zeros(2, 3, 8, 8))
    assert torch.allclose(info.denormalize(occ.baseline_images(inputs, info, "0.25", 4)),
                          torch.full((2, 3, 8, 8), 0.25))
    assert torch.equal(occ.baseline_images(inputs, info, "mean", 4), torch.zeros_like(inputs))
    blurred = info.denormalize(occ.baseline_images(inputs, info, "blur", 4))
    assert blurred.std() < info.denormalize(inputs).std()
    for bad in ("purple", "1.5"):
        with pytest.raises(UserError, match="--baseline"):
            occ.baseline_images(inputs, info, bad, 4)


def test_cli_writes_one_png_per_image(trained_shapes_checkpoint, tmp_path):
    out = tmp_path / "occ"
    code = occlusion_sensitivity.main(["--checkpoint", str(trained_shapes_checkpoint),
                                       "--index", "0", "5", "--out", str(out), "--target",
                                       "true"])
    assert code == 0
    for name in ("test_0", "test_5"):
        assert (out / f"occlusion_{name}.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("argv, message", [
    (["--patch", "40"], "larger than"),
    (["--index", "999999"], "past the shapes test split"),
    (["--target", "hexagon"], "unknown class"),
    (["--target", "17"], "out of range"),
    (["--image", "missing.png"], "no such file"),
])
def test_bad_input_exits_2_with_one_line(trained_shapes_checkpoint, tmp_path, capsys, argv,
                                         message):
    code = occlusion_sensitivity.main(["--checkpoint", str(trained_shapes_checkpoint),
                                       "--out", str(tmp_path), *argv])
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and message in lines[0]


def test_stride_zero_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        occlusion_sensitivity.main(["--stride", "0"])
    assert exit_info.value.code == 2 and len(stderr_lines(capsys.readouterr())) == 1
