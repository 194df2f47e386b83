"""gradient_ascent.py: batch independence, the objective rising, parameterizations, CLI."""
import dataclasses
from argparse import Namespace

import pytest
import torch
import torch.nn as nn
from PIL import Image

import gradient_ascent as ga
from model.data.datasets import DATASET_INFO, folder_info
from model.errors import UserError
from model.nets.architectures import build_model
from model.units import ascent

INFO = DATASET_INFO["shapes"]


def small_model():
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 32).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):  # shifts that keep units alive
            module.bias.data.uniform_(0.05, 0.3)
    return model.requires_grad_(False)


@pytest.mark.parametrize("layer", [None, "conv2"])
@pytest.mark.parametrize("zoom", [0.0, 0.1])
def test_each_image_is_its_own_problem_in_the_batch(layer, zoom):
    """Optimizing units together equals optimizing each alone (no reduction over the batch)."""
    # float64: kernels round differently for a batch of 3 and of 1 (and per CPU), and Adam
    # turns float32 rounding into 1e-3 pixel differences (float64 rounding: about 1e-14).
    # Average pools: the constant start image ties every max-pool window, and rounding would
    # pick the pixel that gets the gradient.
    model = small_model()
    for name, module in model.named_children():
        if isinstance(module, nn.MaxPool2d):
            setattr(model, name, nn.AvgPool2d(2))
    model.double()
    units = torch.tensor([0, 3, 5])
    rules = ascent.Regularizers(scale=zoom, rotate=100 * zoom)
    together, values = ascent.gradient_ascent(model, INFO, units, layer=layer, steps=12,
                                          regularizers=rules)
    assert together.dtype == torch.float64
    for row, unit in enumerate(units.tolist()):
        alone, value = ascent.gradient_ascent(model, INFO, torch.tensor([unit]), layer=layer,
                                          steps=12, regularizers=rules)
        assert torch.allclose(together[row], alone[0], atol=1e-9, rtol=0)
        assert values[row] == pytest.approx(float(value[0]), abs=1e-9)


def test_ascent_raises_the_class_score_and_stays_in_the_pixel_range():
    model = small_model()
    units = torch.arange(6)
    start = model(INFO.normalize(torch.full((6, 3, 32, 32), 0.5))).diagonal()
    images, scores = ascent.gradient_ascent(model, INFO, units, steps=40,
                                        regularizers=ascent.NO_REGULARIZATION)
    assert (scores > start).all()
    assert images.min() >= 0 and images.max() <= 1


def test_polish_drops_the_jitter_only():
    """All steps polished: the jitter setting no longer matters, the blur still does."""
    model = small_model()
    units = torch.tensor([1, 4])

    def ascend(jitter, blur_every, polish):
        rules = ascent.Regularizers(jitter=jitter, blur_every=blur_every, blur_sigma=1.0)
        return ascent.gradient_ascent(model, INFO, units, steps=10, polish=polish,
                                  regularizers=rules)[0]
    assert torch.equal(ascend(2, 2, polish=1.0), ascend(0, 2, polish=1.0))
    assert not torch.allclose(ascend(2, 2, polish=0.0), ascend(0, 2, polish=0.0), atol=1e-3)
    assert not torch.allclose(ascend(0, 2, polish=1.0), ascend(0, 0, polish=1.0), atol=1e-3)


def test_zoom_rotate_is_the_identity_at_rest_and_a_quarter_turn_at_90_degrees():
    images = torch.randn(2, 3, 6, 6, dtype=torch.float64)
    assert torch.allclose(ascent.zoom_rotate(images, 1.0, 0.0), images, atol=1e-12)
    assert torch.allclose(ascent.zoom_rotate(images, 1.0, 90.0), torch.rot90(images, 1, (2, 3)),
                          atol=1e-12)  # counter-clockwise as displayed
    # Magnified 2x, the centre 2x2 block is the centre pixel neighbourhood spread out.
    zoomed = ascent.zoom_rotate(images, 2.0, 0.0)
    assert torch.allclose(zoomed[..., 2:4, 2:4].mean((2, 3)), images[..., 2:4, 2:4].mean((2, 3)),
                          atol=1e-12)


def test_polish_drops_zoom_and_rotation_too():
    model = small_model()
    units = torch.tensor([1, 4])

    def ascend(zoom, polish):
        rules = ascent.Regularizers(jitter=0, scale=zoom, rotate=30 * zoom)
        return ascent.gradient_ascent(model, INFO, units, steps=6, polish=polish,
                                  regularizers=rules)[0]
    assert torch.equal(ascend(0.2, polish=1.0), ascend(0.0, polish=1.0))
    assert not torch.allclose(ascend(0.2, polish=0.0), ascend(0.0, polish=0.0), atol=1e-3)


def test_polish_raises_the_score_of_the_unshifted_image():
    """Jittered steps ascend the score of shifted copies; the polish that of the image itself."""
    model = small_model()
    units = torch.arange(6)
    rules = ascent.Regularizers(jitter=3)
    scores = [ascent.gradient_ascent(model, INFO, units, steps=48, polish=polish,
                                 regularizers=rules)[1] for polish in (0.0, 0.25)]
    assert (scores[1] > scores[0]).all()


def test_fourier_image_is_valid_and_low_frequency():
    generator = torch.Generator().manual_seed(0)
    fourier = ascent.FourierImage(2, INFO, "noise", generator, "cpu")
    pixels = INFO.denormalize(fourier.image())
    assert pixels.shape == (2, 3, 32, 32) and 0 < pixels.min() and pixels.max() < 1
    # 1/f scaling: the same white spectrum gives a smoother image than white pixel noise.
    fourier.parameters[0].data.normal_(generator=generator)
    smooth = fourier.image()
    noise = torch.randn(2, 3, 32, 32, generator=generator)
    assert ascent.total_variation(smooth / smooth.std()).mean() < \
        ascent.total_variation(noise / noise.std()).mean()


def test_total_variation_of_known_images():
    flat = torch.ones(1, 1, 4, 4)
    assert ascent.total_variation(flat).item() == 0
    stripes = torch.tensor([[0.0, 1.0, 0.0, 1.0]]).expand(4, 4)[None, None]
    assert ascent.total_variation(stripes).item() == pytest.approx(1.0)


def test_classes_parse_names_indices_and_ranges():
    assert ga.parse_classes(["ring", "0-1", "5"], INFO.classes) == [0, 1, 4, 5]
    with pytest.raises(UserError, match="unknown class"):
        ga.parse_classes(["hexagon"], INFO.classes)


def test_cli_classes_filters_and_ablation(trained_shapes_checkpoint, tmp_path, capsys):
    base = ["--checkpoint", str(trained_shapes_checkpoint), "--steps", "8",
            "--out", str(tmp_path)]
    assert ga.main(base + ["--classes", "circle", "ring", "--ablation"]) == 0
    assert (tmp_path / "shapes_classes_pixel.png").exists()
    assert (tmp_path / "shapes_ablation.png").exists()
    assert "final probability" in capsys.readouterr().out
    assert ga.main(base + ["--layer", "conv2", "--filters", "0-3", "--param", "fft"]) == 0
    assert (tmp_path / "shapes_conv2_filters.png").exists()
    assert "x its best on the test split" in capsys.readouterr().out
    assert ga.main(base + ["--layer", "conv2", "--filters", "9"]) == 2
    assert ga.get_args_parser().parse_args(["--polish", "0"]).polish == 0
    with pytest.raises(SystemExit):
        ga.get_args_parser().parse_args(["--polish", "1.5"])


@pytest.mark.parametrize("argv, names", [
    (["--classes", "0", "1", "--ablation"], ["shapes_classes_pixel.png", "shapes_ablation.png"]),
    (["--layer", "conv1", "--filters", "0-1"], ["shapes_conv1_filters.png"]),
])
def test_main_reports_every_file_it_wrote(trained_shapes_checkpoint, tmp_path, argv, names):
    written = []
    assert ga.main(["--checkpoint", str(trained_shapes_checkpoint), "--steps", "4",
                    "--out", str(tmp_path), *argv], written) == 0
    assert written == [tmp_path / name for name in names]
    assert set(written) == {*tmp_path.glob("*.png"), *tmp_path.glob("*.json")}


def test_class_models_of_a_many_class_net_default_to_the_folders_classes(tmp_path):
    """ImageNet weights on a folder of a few ImageNet classes: the class models are drawn for
    the folder's classes (by name), not for classes 0, 100, 200, ..."""
    names = [f"class{index}" for index in range(40)]
    for split in ("train", "val"):
        for name in ("class31", "class7"):
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "a.png")
    info = folder_info(tmp_path, classes=names)
    indices = ga.folder_class_indices(Namespace(data_dir=str(tmp_path)), info)
    assert sorted(indices) == [7, 31]
    assert ga.default_classes(40, indices) == indices
    spread = ga.default_classes(40)
    assert len(spread) == ga.MAX_DEFAULT_CLASSES and spread[0] == 0
    assert ga.folder_class_indices(
        Namespace(data_dir=str(tmp_path / "missing")), info) is None


def test_fourier_image_amplitudes_fall_as_the_frequency_to_the_decay():
    """One spectrum coefficient at horizontal frequency k gives a cosine whose amplitude
    falls as (1 / k)^FOURIER_DECAY (Olah et al. 2017's 1/f scaling, steeper), read back
    through the sigmoid (a grey one-channel image: no colour mixing)."""
    gray = dataclasses.replace(INFO, channels=1, mean=(0.5,), std=(0.25,))
    fourier = ascent.FourierImage(1, gray, "zero", None, "cpu", dtype=torch.float64)
    amplitudes = {}
    for k in (1, 4):
        fourier.parameters[0].data.zero_()
        fourier.parameters[0].data[0, 0, 0, k, 0] = 0.1
        pixels = gray.denormalize(fourier.image().detach())[0, 0]
        wave = torch.logit(pixels)  # the spectrum's image before the sigmoid
        assert torch.allclose(wave, wave[:1].expand_as(wave))  # constant down each column
        amplitudes[k] = wave.abs().max().item()
    size = gray.image_size
    # irfft2 (orthonormal) of c at (0, 1): 2 c cos(2 pi x / N) / N, scaled by N / 4.
    assert amplitudes[1] == pytest.approx(2 * 0.1 / size * size / ascent.FOURIER_DIVISOR)
    assert amplitudes[1] / amplitudes[4] == pytest.approx(4 ** ascent.FOURIER_DECAY)
