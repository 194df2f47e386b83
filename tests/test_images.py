"""Shared input selection of the method scripts: image files, test indices, targets."""
import argparse

import pytest
import torch
from PIL import Image

from model.attribution.maps import normalize_maps
from model.cli.method_inputs import load_image_file, select_inputs
from model.cli.targets import resolve_targets
from model.data.datasets import DATASET_INFO
from model.errors import UserError

RGB, GRAY = DATASET_INFO["shapes"], DATASET_INFO["mnist"]


def test_rgb_file_for_a_grayscale_model_is_converted_and_resized(tmp_path, capsys):
    path = tmp_path / "photo.png"
    Image.new("RGB", (56, 40), (255, 255, 255)).save(path)
    pixels = load_image_file(path, GRAY)
    assert pixels.shape == (1, 28, 28) and pixels.dtype == torch.uint8
    assert int(pixels.min()) == 255
    assert "resized" in capsys.readouterr().err


def test_grayscale_file_for_an_rgb_model_gets_three_equal_channels(tmp_path):
    path = tmp_path / "digit.png"
    Image.new("L", (32, 32), 77).save(path)
    pixels = load_image_file(path, RGB)
    assert pixels.shape == (3, 32, 32) and (pixels == 77).all()


def test_pixel_layout_is_kept(tmp_path):
    path = tmp_path / "corner.png"
    image = Image.new("RGB", (32, 32), (0, 0, 0))
    image.putpixel((5, 2), (10, 20, 30))  # (x, y)
    image.save(path)
    pixels = load_image_file(path, RGB)
    assert pixels[:, 2, 5].tolist() == [10, 20, 30] and int(pixels.sum()) == 60


@pytest.mark.parametrize("content, message", [(None, "no such file"),
                                              (b"not an image", "not a readable image")])
def test_unreadable_files_are_user_errors(tmp_path, content, message):
    path = tmp_path / "bad.png"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message):
        load_image_file(path, RGB)


def test_index_selection_carries_labels_and_masks():
    args = argparse.Namespace(image=None, index=[4, 0], data_dir="data", workers=0)
    selection = select_inputs(args, RGB, "cpu")
    assert selection.inputs.shape == (2, 3, 32, 32)
    assert selection.names == ["test_4", "test_0"] and selection.masks.shape == (2, 32, 32)
    with pytest.raises(UserError, match="past the shapes test split"):
        select_inputs(argparse.Namespace(image=None, index=[2000], data_dir="data",
                                        workers=0), RGB, "cpu")


def test_targets_per_image():
    logits = torch.tensor([[0.0, 5.0, 0, 0, 0, 0], [3.0, 0, 0, 0, 0, 0]])
    labels = torch.tensor([2, 0])
    assert resolve_targets("pred", RGB, logits, labels).tolist() == [1, 0]
    assert resolve_targets("true", RGB, logits, labels).tolist() == [2, 0]
    assert resolve_targets("ring", RGB, logits, labels).tolist() == [4, 4]
    assert resolve_targets("Ring", RGB, logits, labels).tolist() == [4, 4]
    assert resolve_targets("3", RGB, logits, labels).tolist() == [3, 3]
    with pytest.raises(UserError, match="out of range"):
        resolve_targets("6", RGB, logits, labels)
    with pytest.raises(UserError, match="needs test images with labels"):
        resolve_targets("true", RGB, logits, torch.tensor([-1, -1]))


def test_normalized_maps_are_finite_in_unit_range_even_when_constant():
    maps = torch.stack([torch.zeros(4, 4), torch.full((4, 4), 3.0), torch.arange(16.).view(4, 4)])
    maps[2, 0, 0] = float("nan")
    normalized = normalize_maps(maps)
    assert torch.isfinite(normalized).all()
    assert normalized.min() >= 0 and normalized.max() <= 1
    assert (normalized[:2] == 0).all() and normalized[2].max() == pytest.approx(1.0)


class PixelOracle(torch.nn.Module):
    """Predicts the class written in the image's first pixel value (0-5)."""

    def __init__(self, info):
        super().__init__()
        self.info = info

    def forward(self, inputs):
        value = self.info.denormalize(inputs)[:, 0, 0, 0].mul(255).round().long()
        return torch.nn.functional.one_hot(value, 6).float()


def test_sample_test_images_mixes_wrong_and_right_decisions_and_every_class():
    from model.data.datasets import DATASET_INFO, ImageDataset
    from model.data.sampling import sample_test_images

    labels = torch.arange(60) % 6
    predicted = labels.clone()
    predicted[:12] = (labels[:12] + 1) % 6  # the first 12 images are misclassified
    images = predicted.view(-1, 1, 1, 1).expand(-1, 3, 4, 4).to(torch.uint8)
    dataset = ImageDataset(DATASET_INFO["shapes"], images, labels)
    oracle = PixelOracle(dataset.info)

    def sample(seed):
        return sample_test_images(oracle, dataset, 12, seed, "cpu", wrong_share=0.5)

    indices, predictions = sample(0)
    assert torch.equal(predictions, predicted[indices])
    assert (indices[:6] < 12).all() and (indices[6:] >= 12).all()  # wrong first, then right
    assert set(labels[indices[:6]].tolist()) == set(range(6))  # every class among the wrong
    assert set(labels[indices[6:]].tolist()) == set(range(6))  # and among the right
    assert torch.equal(sample(0)[0], indices) and not torch.equal(sample(1)[0], indices)


def test_test_predictions_are_every_images_argmax_with_progress_per_batch():
    """Channels-last batches give the same predictions as the model on each image alone, and
    the progress callback counts the images done after every batch."""
    from model.data.datasets import DATASET_INFO, ImageDataset
    from model.data.sampling import test_predictions

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 3, 8, 8), generator=generator, dtype=torch.uint8)
    dataset = ImageDataset(DATASET_INFO["shapes"], images, torch.zeros(10, dtype=torch.int64))
    layers = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.ReLU(),
                                 torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten()).double()

    def net(inputs):  # float64: an argmax must not flip with the batch's rounding
        return layers(inputs.double())

    expected = torch.stack([net(dataset.info.normalize(image[None])).argmax(1)[0]
                            for image in images])
    seen = []
    predictions = test_predictions(net, dataset, "cpu", batch_size=4,
                                   progress=lambda done, total: seen.append((done, total)))
    assert torch.equal(predictions, expected)
    assert seen == [(4, 10), (8, 10), (10, 10)]
