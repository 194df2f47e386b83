"""The torchvision loading path on tiny files in torchvision's own on-disk formats."""
import os
import pickle
import struct
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torchvision.datasets

import model.data.datasets
from model.data.augmentation import random_crop_flip
from model.data.batches import iterate_batches
from model.data.datasets import DATASET_INFO, DatasetUnavailableError, ImageDataset, load_dataset


def write_idx(path, array):
    """Write ``array`` (uint8) as an IDX file, the format of the MNIST distribution."""
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist_format(root, folder, rng):
    raw = root / folder / "raw"
    arrays = {}
    for prefix, count in (("train", 5), ("t10k", 3)):
        images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=count, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_format_files_load_without_download(tmp_path, name, folder):
    arrays = write_mnist_format(tmp_path, folder, np.random.default_rng(0))
    for split, prefix in (("train", "train"), ("test", "t10k")):
        data = load_dataset(name, split, tmp_path, download=False)
        images, labels = arrays[prefix]
        assert data.images.shape == (len(labels), 1, 28, 28)
        assert torch.equal(data.images[:, 0], torch.from_numpy(images))
        assert data.labels.tolist() == labels.tolist()
        assert data.info is DATASET_INFO[name] and data.masks is None


def test_cifar10_pickle_batches_load_without_download(tmp_path, monkeypatch):
    # Tiny files cannot match the official md5 sums: check presence only, as a user's intact
    # download would pass the real check.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3 * 32 * 32), dtype=np.uint8)
        labels = rng.integers(0, 10, size=2).tolist()
        (folder / name).write_bytes(pickle.dumps({"data": data, "labels": labels}))
        batches[name] = (data, labels)
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": list(DATASET_INFO["cifar10"].classes)}))
    train = load_dataset("cifar10", "train", tmp_path, download=False)
    test = load_dataset("cifar10", "test", tmp_path, download=False)
    assert train.images.shape == (10, 3, 32, 32) and test.images.shape == (2, 3, 32, 32)
    # Row layout of a CIFAR batch: 1024 red, then green, then blue values, row-major.
    expected = torch.from_numpy(batches["test_batch"][0].reshape(2, 3, 32, 32))
    assert torch.equal(test.images, expected)
    assert test.labels.tolist() == batches["test_batch"][1]
    assert train.labels.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])


def test_missing_files_without_download_name_the_folder_and_suggest_shapes(tmp_path):
    with pytest.raises(DatasetUnavailableError) as error:
        load_dataset("mnist", "train", tmp_path, download=False)
    message = str(error.value)
    assert str(tmp_path / "MNIST" / "raw") in message and "--dataset shapes" in message
    assert "\n" not in message


@pytest.mark.parametrize("name, module", [("mnist", torchvision.datasets.mnist),
                                          ("fashion_mnist", torchvision.datasets.mnist),
                                          ("cifar10", torchvision.datasets.cifar)])
def test_failed_download_is_a_clear_error(tmp_path, monkeypatch, name, module):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(module, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError, match="download failed") as error:
        load_dataset(name, "test", tmp_path, download=True)
    assert "--dataset shapes" in str(error.value)


def test_shapes_split_sizes_and_masks(shapes_test_split):
    assert len(shapes_test_split) == 2000
    assert shapes_test_split.masks.shape == (2000, 32, 32)
    image, label = shapes_test_split[3]
    assert image.shape == (3, 32, 32) and image.dtype == torch.float32
    assert label == int(shapes_test_split.labels[3])


def test_normalize_then_denormalize_is_identity():
    info = DATASET_INFO["cifar10"]
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    restored = info.denormalize(info.normalize(images))
    assert torch.allclose(restored, images.float() / 255, atol=1e-6)
    normalized = info.normalize(images)
    assert torch.allclose(normalized[:, 1], (images[:, 1] / 255 - info.mean[1]) / info.std[1])


def test_random_crop_flip_is_a_window_of_the_padded_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    crops = random_crop_flip(images, generator, padding=2)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for crop, source in zip(crops, padded):
        windows = [window.flip(-1) if flip else window
                   for y in range(5) for x in range(5) for flip in (False, True)
                   for window in [source[:, y:y + 8, x:x + 8]]]
        assert any(torch.equal(crop, window) for window in windows)
    assert not torch.equal(crops, images)


def test_reflected_crops_are_windows_of_the_reflect_padded_image():
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (6, 3, 8, 8), dtype=torch.uint8)
    crops = random_crop_flip(images, generator, padding=2, reflect=True)
    padded = torch.nn.functional.pad(images.float(), (2, 2, 2, 2), mode="reflect")
    for crop, source in zip(crops.float(), padded):
        windows = [window.flip(-1) if flip else window
                   for y in range(5) for x in range(5) for flip in (False, True)
                   for window in [source[:, y:y + 8, x:x + 8]]]
        assert any(torch.equal(crop, window) for window in windows)
    assert crops.dtype == torch.uint8 and not torch.equal(crops, images)


def test_batches_cover_every_image_once_and_shuffle_with_a_generator():
    info = DATASET_INFO["mnist"]
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 28, 28)
    data = ImageDataset(info, images.contiguous(), torch.arange(10))
    ordered = torch.cat([labels for _, labels in iterate_batches(data, 4, "cpu")])
    assert ordered.tolist() == list(range(10))
    shuffled = torch.cat([labels for _, labels in
                          iterate_batches(data, 4, "cpu", torch.Generator().manual_seed(0))])
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    for inputs, labels in iterate_batches(data, 3, "cpu"):
        assert torch.allclose(info.denormalize(inputs)[:, 0, 0, 0] * 255, labels.float(),
                              atol=1e-4)


def write_cifar_folders(root, per_class, rng, suffix=".png"):
    """CIFAR-10 as class folders (the layout of the PNG/JPEG distributions): {split: (images
    (N, 3, 32, 32) uint8, labels)}, classes in CIFAR-10's order."""
    from PIL import Image

    written = {}
    for split, count in per_class.items():
        images, labels = [], []
        for label, name in enumerate(DATASET_INFO["cifar10"].classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{index:04d}{suffix}")
                images.append(torch.from_numpy(pixels).permute(2, 0, 1))
                labels.append(label)
        written[split] = (torch.stack(images), labels)
    return written


@pytest.fixture
def small_cifar_counts(monkeypatch):
    counts = {"train": 2, "test": 1}
    monkeypatch.setitem(model.data.datasets.IMAGE_FOLDER_COUNTS, "cifar10", counts)
    return counts


def test_cifar10_class_folders_load_when_the_pickles_are_absent(tmp_path, small_cifar_counts):
    written = write_cifar_folders(tmp_path, small_cifar_counts, np.random.default_rng(3))
    for split in ("train", "test"):
        data = load_dataset("cifar10", split, tmp_path, download=False)
        images, labels = written[split]
        assert torch.equal(data.images, images)  # PNG is lossless
        assert data.labels.tolist() == labels
        assert data.info is DATASET_INFO["cifar10"]


@pytest.mark.parametrize("damage, words", [
    ("missing class", "holds the class folders airplane, automobile, bird, cat, deer, dog, "
                      "frog, horse, ship; cifar10 needs exactly"),
    ("wrong count", "has 1 images; cifar10's train split has 2 per class"),
    ("wrong size", "is 20x20, not 32x32"),
    ("not an image", "is not a readable image"),
])
def test_cifar10_class_folders_that_do_not_fit_are_named(damage, words, tmp_path,
                                                         small_cifar_counts):
    from PIL import Image

    write_cifar_folders(tmp_path, small_cifar_counts, np.random.default_rng(4))
    truck = tmp_path / "train" / "truck"
    if damage == "missing class":
        for path in truck.iterdir():
            path.unlink()
        truck.rmdir()
    elif damage == "wrong count":
        (truck / "0001.png").unlink()
    elif damage == "wrong size":
        Image.new("RGB", (20, 20)).save(truck / "0001.png")
    else:
        (truck / "0001.png").write_bytes(b"not a PNG")
    with pytest.raises(model.data.datasets.DamagedDatasetError, match="^") as error:
        load_dataset("cifar10", "train", tmp_path, download=False)
    assert words in str(error.value)
