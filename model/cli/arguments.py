"""Argument types and the flags every script shares (``common_parser``): a bad value is one
line from argparse and exit code 2, like every other user error (``model.cli.running``)."""
import argparse
import os

from model.attribution.registry import method_variant
from model.data.datasets import DATASETS
from model.errors import UserError
from model.nets.architectures import architecture_kind

MAX_SEED = 2**32 - 1  # NumPy's limit; torch and Python accept it too

DEFAULT_WORKERS = min(4, os.cpu_count() or 1)


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse.ArgumentParser`` whose errors are one line (no usage block) and exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def positive_int(text):
    """argparse type: an integer > 0."""
    value = _parse(int, text, "an integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text):
    """argparse type: an integer >= 0."""
    value = _parse(int, text, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text}")
    return value


def positive_float(text):
    """argparse type: a finite float > 0."""
    value = _parse(float, text, "a number")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def minutes_or_none(text):
    """argparse type: ``none``, or a finite number of minutes > 0 (``--budget``)."""
    if text.strip().lower() == "none":
        return "none"
    return positive_float(text)


def non_negative_float(text):
    """argparse type: a finite float >= 0."""
    value = _parse(float, text, "a number")
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def positive_fraction(text):
    """argparse type: a number in (0, 1]."""
    value = _parse(float, text, "a number")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def fraction(text):
    """argparse type: a number in [0, 1]."""
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def method_name(text):
    """A registered method's name, or a variant with on/off options switched on
    (``gradcam:aug-smooth``; ``model.attribution.registry.method_variant``)."""
    try:
        method_variant(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def architecture(text):
    """argparse type: an --arch (``model.nets.architectures.build_model``); a file spec's path
    made absolute, so a checkpoint rebuilds the net from any folder. ``list`` passes as it is:
    the script prints every name (``model.cli.running.run``)."""
    if text == "list":
        return text
    try:
        kind = architecture_kind(text)
    except UserError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    where, _, name = text.rpartition(":")
    if kind == "module" and where.endswith(".py"):
        return f"{os.path.abspath(where)}:{name}"
    return text


def seed_int(text):
    """argparse type: an integer in 0..2**32-1, the range every random generator accepts."""
    value = _parse(int, text, "an integer")
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to {MAX_SEED}, got {text}")
    return value


def _parse(kind, text, description):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {description}, got {text!r}") from None


def common_parser():
    """Parent parser with the flags every script shares: dataset, arch, data, device, seed."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--dataset", choices=DATASETS, default="shapes",
                        help="dataset the model is trained on (default: shapes)")
    parser.add_argument("--arch", type=architecture, default="vgg",
                        help="network architecture: simple, vgg, any of torchvision's CNNs "
                             "by name (resnet50, densenet121, efficientnet_b0, ...), "
                             "timm:NAME, or your own path/to/net.py:Name or "
                             "package.module:Name; list: print them (default: vgg)")
    parser.add_argument("--data-dir", default="data",
                        help="where torchvision's dataset files live or are downloaded to; "
                             "for imagefolder the folder with train/ and val/ (or test/) "
                             "class folders (default: data)")
    parser.add_argument("--image-size", type=positive_int, default=None,
                        help="imagefolder: the model's input size in px (default: 224; "
                             "a checkpoint keeps its own)")
    parser.add_argument("--workers", type=non_negative_int, default=DEFAULT_WORKERS,
                        help="imagefolder: DataLoader processes decoding images (default: "
                             f"{DEFAULT_WORKERS})")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda or cuda:N; auto picks CUDA when present "
                             "(default: auto)")
    parser.add_argument("--seed", type=seed_int, default=0,
                        help="seed for every random source (default: 0)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback instead of a one-line error")
    return parser


SMOOTHING = ("aug-smooth", "eigen-smooth")  # the CAM family's smoothing options


def smoothing_options(args):
    """The smoothing options switched on by :func:`smoothing_parser`'s flags, as the
    registry's variants name them: ``["aug-smooth"]`` for ``--aug-smooth``."""
    return [option for option in SMOOTHING if getattr(args, option.replace("-", "_"))]


def smoothing_parser():
    """Parent parser with the CAM family's smoothing switches (``model.attribution.cam``):
    ``--aug-smooth`` and ``--eigen-smooth``, for the scripts that run the CAM methods."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--aug-smooth", action="store_true",
                        help="every CAM method with test-time augmentation: the mean map over "
                             "flipped and zoomed copies, each brought back to the image")
    parser.add_argument("--eigen-smooth", action="store_true",
                        help="every CAM method with the first principal component of the "
                             "weighted activations w_k A_k instead of their sum")
    return parser
