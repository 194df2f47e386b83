"""Checks of torchvision's dataset files: a damaged or mismatched file is named, with what is
wrong with it, instead of surfacing as an AssertionError, an IndexError, silently shorter data
or "the download failed".

MNIST and Fashion-MNIST come as IDX files (LeCun et al.'s format): a 4-byte magic number
``0x0000TTDD`` (TT = 0x08 for unsigned bytes, DD = the number of dimensions), each dimension as
a big-endian int32, then the data. CIFAR-10 comes as pickled batches whose MD5 sums torchvision
publishes, so a damaged batch is found by its checksum.
"""
import math
import struct
from pathlib import Path

from model.errors import UserError

IDX_UNSIGNED_BYTE = 0x08

DELETE_ADVICE = "delete it (the next run downloads it again) or copy an intact one there"


class DamagedDatasetError(UserError):
    """A dataset file is there but truncated, altered, or does not match its partner file."""


def idx_shape(path):
    """The dimensions an IDX file's header declares, after checking the header and the size.

    Raises:
        DamagedDatasetError: a wrong magic number, or a file size other than the header and
            the declared data (truncated or with bytes appended).
    """
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as file:
        magic = file.read(4)
        if len(magic) < 4 or magic[:2] != b"\0\0" or magic[2] != IDX_UNSIGNED_BYTE \
                or not 1 <= magic[3] <= 3:
            raise DamagedDatasetError(
                f"{path} is not an IDX file of unsigned bytes: its magic number is "
                f"0x{magic.hex() or 'empty'}, expected 0x000008 then 01-03; {DELETE_ADVICE}")
        header = file.read(4 * magic[3])
    if len(header) < 4 * magic[3]:
        raise DamagedDatasetError(f"{path} is truncated inside its header; {DELETE_ADVICE}")
    shape = struct.unpack(f">{magic[3]}I", header)
    expected_size = 4 + len(header) + math.prod(shape)  # one byte per value
    if size != expected_size:
        state = "truncated" if size < expected_size else "longer than its header declares"
        raise DamagedDatasetError(
            f"{path} is {state}: its header declares {'x'.join(map(str, shape))} values "
            f"({expected_size} bytes) but the file has {size} bytes; {DELETE_ADVICE}")
    return shape


def check_mnist_split(images_path, labels_path, image_size):
    """Check an MNIST-format split: two intact IDX files of the same length and image size.

    Raises:
        DamagedDatasetError: naming the file and what is wrong.
    """
    image_shape, label_shape = idx_shape(images_path), idx_shape(labels_path)
    if len(image_shape) != 3 or image_shape[1:] != (image_size, image_size):
        raise DamagedDatasetError(
            f"{images_path} holds {'x'.join(map(str, image_shape))} values, not N images of "
            f"{image_size}x{image_size}; {DELETE_ADVICE}")
    if len(label_shape) != 1:
        raise DamagedDatasetError(
            f"{labels_path} holds {'x'.join(map(str, label_shape))} values, not a list of "
            f"labels; {DELETE_ADVICE}")
    if label_shape[0] != image_shape[0]:
        raise DamagedDatasetError(
            f"{labels_path} has {label_shape[0]} labels but {Path(images_path).name} has "
            f"{image_shape[0]} images: the two files do not belong together; {DELETE_ADVICE}")


def check_labels(labels, class_count, source):
    """Refuse labels outside 0..class_count-1 (``source`` names the file or folder).

    Raises:
        DamagedDatasetError: the first bad entry and its value.
    """
    bad = ((labels < 0) | (labels >= class_count)).nonzero()
    if len(bad):
        index = int(bad[0, 0])
        raise DamagedDatasetError(
            f"{source}: label {int(labels[index])} at entry {index} is outside the "
            f"{class_count} classes (0-{class_count - 1}); the file is damaged; "
            f"{DELETE_ADVICE}")


def damaged_cifar_files(folder, file_list):
    """Names of the CIFAR-10 files in ``folder`` whose MD5 sum differs from the published one.

    Args:
        file_list: (name, md5) pairs, torchvision's ``CIFAR10.train_list + test_list``.
    """
    from torchvision.datasets.utils import check_integrity

    return [name for name, md5 in file_list
            if (Path(folder) / name).is_file() and not check_integrity(Path(folder) / name, md5)]
