"""Datasets as in-memory uint8 tensors, with their class names, size and normalization.

``imagefolder`` is the user's own class folders, streamed from disk (``model.data.folders``);
``cifar10``, ``mnist`` and ``fashion_mnist`` come through ``torchvision.datasets`` (downloaded
into ``--data-dir`` when missing); ``cifar10`` also from class folders of PNG or JPEG files
(``--data-dir``/{train,test}/<class>/); ``shapes`` is generated in code (see
``model.data.shapes``) and also carries a ground-truth object mask per image. Every split becomes
an
:class:`ImageDataset` holding all images as one uint8 tensor, so batches are sliced, converted
and normalized (and augmented) on the device in one step each, without a per-image Python
transform pipeline.
"""
import functools
import pickle
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.error import URLError

import torch

from model.data import shapes
from model.data.dataset_files import (
    DELETE_ADVICE,
    DamagedDatasetError,
    check_labels,
    check_mnist_split,
    damaged_cifar_files,
)
from model.data.folders import folder_classes, read_folder_split
from model.errors import UserError, one_line
from model.nets.zoo import IMAGENET_MEAN, IMAGENET_STD

DATASETS = ("shapes", "mnist", "fashion_mnist", "cifar10", "imagefolder")

PHOTO_DATASETS = ("cifar10", "imagefolder")  # natural photos, unlike shapes and digits

FOLDER_IMAGE_SIZE = 224  # --dataset imagefolder's default --image-size


SMALL_IMAGE_SIDE = 64  # the 28 and 32 px datasets are small; 224 px photos are not


def small_images(image_size):
    """Whether images of ``image_size`` px are small: up to 64 px every method runs at its
    finest settings (occlusion at every position, the report's full counts), above it the
    settings scale with the image and the report plans its work on a CPU."""
    return image_size <= SMALL_IMAGE_SIDE


def dataset_title(name, data_dir):
    """How pages and figures name a dataset: its own name, or for ``imagefolder`` the name of
    the user's folder (``mobilenet_v2 on imagenette``, not ``on imagefolder``)."""
    if name != "imagefolder" or not data_dir:
        return name
    folder = Path(data_dir).resolve()
    return folder.parent.name if folder.name in ("train", "val", "test") else folder.name


@dataclass(frozen=True)
class DatasetInfo:
    """What a model needs to know about its data: classes, input shape and normalization."""

    name: str
    classes: tuple
    channels: int
    image_size: int
    mean: tuple
    std: tuple

    def to_dict(self):
        """Plain dict (lists, not tuples) for a checkpoint."""
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data):
        return cls(name=data["name"], classes=tuple(data["classes"]),
                   channels=int(data["channels"]), image_size=int(data["image_size"]),
                   mean=tuple(data["mean"]), std=tuple(data["std"]))

    def normalize(self, images):
        """uint8 (N, C, H, W) in [0, 255] or float in [0, 1] -> normalized float (N, C, H, W)."""
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        mean = torch.tensor(self.mean, device=images.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=images.device).view(1, -1, 1, 1)
        return (images - mean) / std

    def denormalize(self, inputs):
        """Normalized float (N, C, H, W) -> float in [0, 1] (clamped), for display."""
        mean = torch.tensor(self.mean, device=inputs.device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=inputs.device).view(1, -1, 1, 1)
        return (inputs * std + mean).clamp(0.0, 1.0)


DATASET_INFO = {
    "shapes": DatasetInfo("shapes", shapes.SHAPE_CLASSES, 3, shapes.IMAGE_SIZE,
                          (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
    "mnist": DatasetInfo("mnist", tuple(str(digit) for digit in range(10)), 1, 28,
                         (0.1307,), (0.3081,)),
    "fashion_mnist": DatasetInfo("fashion_mnist",
                                 ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                  "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
                                 1, 28, (0.2860,), (0.3530,)),
    "cifar10": DatasetInfo("cifar10",
                           ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                            "horse", "ship", "truck"),
                           3, 32, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


class DatasetUnavailableError(UserError):
    """A torchvision dataset is neither on disk nor downloadable."""


class ImageDataset(torch.utils.data.Dataset):
    """One split held in memory.

    Attributes:
        info: the :class:`DatasetInfo`.
        images: (N, C, H, W) uint8.
        labels: (N,) int64.
        masks: (N, H, W) bool ground-truth object masks, or None (only ``shapes`` has them).
    """

    def __init__(self, info, images, labels, masks=None):
        self.info, self.images, self.labels, self.masks = info, images, labels, masks

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, index):
        """(normalized image (C, H, W), label) like any torchvision dataset."""
        return self.info.normalize(self.images[index:index + 1])[0], int(self.labels[index])

    def subset(self, count):
        """The first ``count`` images (all when ``count`` is None)."""
        if count is None or count >= len(self):
            return self
        masks = None if self.masks is None else self.masks[:count]
        return ImageDataset(self.info, self.images[:count], self.labels[:count], masks)

    def spread(self, count):
        """About ``count`` images taken at an even stride over the split (all when ``count``
        is None or not smaller): a sample of every class of a split sorted by class."""
        if count is None or count >= len(self):
            return self
        index = slice(None, None, len(self) // count)
        masks = None if self.masks is None else self.masks[index]
        return ImageDataset(self.info, self.images[index], self.labels[index], masks)


@functools.lru_cache(maxsize=4)
def _shapes_split(split, first=None):
    """Generate a shapes split (its first ``first`` images) once per process: scripts and
    tests load it repeatedly."""
    count, seed = ((shapes.TRAIN_SIZE, shapes.TRAIN_SEED) if split == "train"
                   else (shapes.TEST_SIZE, shapes.TEST_SEED))
    return shapes.generate_shapes(count, seed, first)


def _torchvision_arrays(name, root, train):
    """Load a torchvision dataset without downloading; return (images uint8 NCHW, labels)."""
    import torchvision.datasets as tvd

    if name == "cifar10":
        data = tvd.CIFAR10(root, train=train, download=False)
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        return images, torch.tensor(data.targets, dtype=torch.int64)
    cls = tvd.MNIST if name == "mnist" else tvd.FashionMNIST
    data = cls(root, train=train, download=False)
    return data.data.unsqueeze(1).contiguous(), data.targets.to(torch.int64)


def _read_checked(name, root, train):
    """:func:`_torchvision_arrays` with the files checked first (``model.data.dataset_files``), so
    that a damaged or mismatched file is named instead of read wrongly or re-downloaded.

    Raises:
        DamagedDatasetError: a file is there but truncated, altered or mismatched.
        RuntimeError: torchvision's "Dataset not found" (files missing).
    """
    info = DATASET_INFO[name]
    folder, _ = expected_files(name, root)
    if name == "cifar10":
        try:
            images, labels = _torchvision_arrays(name, root, train)
        except RuntimeError:  # missing, or a file whose MD5 sum differs
            import torchvision.datasets as tvd

            damaged = damaged_cifar_files(folder, tvd.CIFAR10.train_list + tvd.CIFAR10.test_list)
            if damaged:
                raise DamagedDatasetError(
                    f"{folder / damaged[0]} is damaged: its MD5 sum differs from the published "
                    f"file's (truncated or altered)"
                    + (f", and so do {', '.join(damaged[1:])}" if damaged[1:] else "")
                    + f"; {DELETE_ADVICE}") from None
            raise
        except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError) as error:
            raise DamagedDatasetError(f"a CIFAR-10 file in {folder} cannot be read "
                                      f"({type(error).__name__}: {one_line(error)}); "
                                      f"{DELETE_ADVICE}") from None
        check_labels(labels, len(info.classes), folder)
        return images, labels
    prefix = "train" if train else "t10k"
    images_file, labels_file = (folder / f"{prefix}-images-idx3-ubyte",
                                folder / f"{prefix}-labels-idx1-ubyte")
    if images_file.is_file() and labels_file.is_file():
        check_mnist_split(images_file, labels_file, info.image_size)
    images, labels = _torchvision_arrays(name, root, train)
    check_labels(labels, len(info.classes), labels_file)
    return images, labels


IMAGE_FOLDER_COUNTS = {"cifar10": {"train": 5000, "test": 1000}}  # images per class


def image_folder_split(name, root, split):
    """The class-folder copy of a split (``root/<split>/<class>/*``), or None when absent."""
    folder = Path(root) / split
    return folder if name in IMAGE_FOLDER_COUNTS and folder.is_dir() else None


def _read_image_folders(name, folder, split):
    """Decode a split stored as class folders (PNG or JPEG, e.g. the common CIFAR-10 PNG
    distributions) into uint8 (N, C, H, W) and int64 labels, checked against the dataset.

    Files are listed by ``torchvision.datasets.ImageFolder``'s rules (classes = sorted folder
    names) and decoded once by ``torchvision.io.decode_image`` (60,000 CIFAR-10 JPEGs: about
    6 s on a 2-core CPU).

    Raises:
        DamagedDatasetError: other class folders than the dataset's, a class with another
            number of images, or a file that is no image of the dataset's size.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
    from torchvision.io import ImageReadMode, decode_image, read_file

    info, per_class = DATASET_INFO[name], IMAGE_FOLDER_COUNTS[name][split]
    try:
        classes, class_index = find_classes(folder)
    except FileNotFoundError:
        classes, class_index = [], {}
    if tuple(classes) != tuple(sorted(info.classes)):
        raise DamagedDatasetError(
            f"{folder} holds the class folders {', '.join(classes) or 'none'}; {name} needs "
            f"exactly: {', '.join(sorted(info.classes))}")
    samples = make_dataset(folder, class_index, extensions=IMG_EXTENSIONS)
    counts = torch.bincount(torch.tensor([label for _, label in samples]),
                            minlength=len(classes))
    for class_name, count in zip(classes, counts.tolist()):
        if count != per_class:
            raise DamagedDatasetError(
                f"{folder / class_name} has {count} images; {name}'s {split} split has "
                f"{per_class} per class")
    images = torch.empty(len(samples), info.channels, info.image_size, info.image_size,
                         dtype=torch.uint8)
    mode = ImageReadMode.RGB if info.channels == 3 else ImageReadMode.GRAY
    for index, (path, _) in enumerate(samples):
        try:
            with warnings.catch_warnings():  # torchvision 0.29 points to TorchCodec, still works
                warnings.simplefilter("ignore", DeprecationWarning)
                image = decode_image(read_file(path), mode=mode)
        except RuntimeError as error:
            raise DamagedDatasetError(f"{path} is not a readable image ({one_line(error)})"
                                      ) from None
        if image.shape[1:] != images.shape[2:]:
            raise DamagedDatasetError(f"{path} is {image.shape[2]}x{image.shape[1]}, not "
                                      f"{info.image_size}x{info.image_size}")
        images[index] = image
    # ImageFolder numbers classes alphabetically; the dataset's own order may differ.
    to_dataset = torch.tensor([info.classes.index(class_name) for class_name in classes])
    return images, to_dataset[torch.tensor([label for _, label in samples])]


def _download(name, root):
    import torchvision.datasets as tvd

    cls = {"cifar10": tvd.CIFAR10, "mnist": tvd.MNIST, "fashion_mnist": tvd.FashionMNIST}[name]
    cls(root, train=True, download=True)
    cls(root, train=False, download=True)


def expected_files(name, root):
    """Where torchvision looks for a dataset's files, as (folder, file names)."""
    root = Path(root)
    if name == "cifar10":
        return root / "cifar-10-batches-py", ["data_batch_1", "...", "data_batch_5",
                                              "test_batch", "batches.meta"]
    folder = root / ("MNIST" if name == "mnist" else "FashionMNIST") / "raw"
    return folder, ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                    "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def folder_info(root, image_size=None, classes=None):
    """The DatasetInfo of ``--dataset imagefolder``: the class folders' names (or
    ``classes``), 3 channels, ``image_size`` px (default 224) and ImageNet's normalization
    (the statistics torchvision's pretrained weights expect)."""
    return DatasetInfo("imagefolder", tuple(classes or folder_classes(root)), 3,
                       image_size or FOLDER_IMAGE_SIZE, IMAGENET_MEAN, IMAGENET_STD)


def load_dataset(name, split, data_dir="data", download=True, info=None, image_size=None,
                 workers=0, first=None):
    """Load one split of a dataset into memory (``imagefolder``: its file list).

    Args:
        name: one of ``DATASETS``.
        split: ``"train"`` or ``"test"``.
        data_dir: torchvision's root folder (unused by ``shapes``), or the class folders.
        download: fetch missing torchvision files (the real download code of torchvision).
        info: ``imagefolder`` only: the model's DatasetInfo (classes, size), default
            :func:`folder_info` with ``image_size``.
        workers: ``imagefolder`` only: DataLoader processes that decode its batches.
        first: only the first ``first`` images (all when None), as ``.subset(first)`` keeps;
            of shapes no others are rendered (its 20,000 training images take 2 s on one
            core, a quick run with ``--max-train-images 256`` needs a tenth of them).

    Returns:
        :class:`ImageDataset`, or for ``imagefolder`` a ``model.folders.FolderDataset``.

    Raises:
        DatasetUnavailableError: the files are missing and could not be downloaded; the
            message names the folder and files torchvision expects and suggests ``shapes``.
        DamagedDatasetError: a file is there but damaged or mismatched; the message names it.
    """
    if name not in DATASETS:
        raise UserError(f"unknown dataset '{name}'; choose from {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name == "imagefolder":
        return read_folder_split(info or folder_info(data_dir, image_size), data_dir, split,
                                 workers).subset(first)
    if name == "shapes":
        return ImageDataset(DATASET_INFO[name], *_shapes_split(split, first))
    return _torchvision_split(name, split, data_dir, download).subset(first)


def _torchvision_split(name, split, data_dir, download):
    """MNIST, Fashion-MNIST or CIFAR-10 from torchvision's files or class folders (see
    :func:`load_dataset`)."""
    info = DATASET_INFO[name]
    train = split == "train"
    folders = image_folder_split(name, data_dir, split)
    if folders is not None and not expected_files(name, data_dir)[0].is_dir():
        return ImageDataset(info, *_read_image_folders(name, folders, split))
    try:
        images, labels = _read_checked(name, data_dir, train)
    except RuntimeError as missing:  # torchvision's "Dataset not found"
        reason = str(missing).split(".")[0].lower()
        if download:
            try:
                _download(name, data_dir)
                images, labels = _read_checked(name, data_dir, train)
            except DamagedDatasetError:
                raise
            except Exception as error:  # URLError, OSError, RuntimeError: all mean "no data"
                reason = _download_failure(error, data_dir)
            else:
                return ImageDataset(info, images, labels)
        folder, files = expected_files(name, data_dir)
        folders = (f" (or class folders {Path(data_dir) / split}/<class>/*.png|jpg)"
                   if name in IMAGE_FOLDER_COUNTS else "")
        raise DatasetUnavailableError(
            f"{name}: {reason}; torchvision expects {', '.join(files)} in {folder}/{folders} "
            f"-- put them there (see docs/training.md, 'Real datasets offline') or use --dataset "
            f"shapes, which needs no download") from None
    return ImageDataset(info, images, labels)


def _download_failure(error, root):
    """Why a download failed, in words a user can act on."""
    text = one_line(error)
    if "urlopen error" in text or "Error downloading" in text or isinstance(error, URLError):
        return "the download failed: no network connection (or the server is unreachable)"
    root = Path(root)
    if root.exists() and not root.is_dir():
        return f"the download failed: --data-dir {root} is a file, not a folder"
    if isinstance(error, OSError) and error.strerror:
        return f"the download failed: cannot write in --data-dir {root} ({error.strerror})"
    return f"the download failed ({text})"
