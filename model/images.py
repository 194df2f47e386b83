"""Choosing what a method script explains: the model, the input images and the target classes.

Shared by every method script: ``method_parser`` adds the flags, ``load_method_model`` finds and
loads the checkpoint, ``select_inputs`` turns ``--index``/``--image`` into a normalized batch,
and ``resolve_targets`` turns ``--target`` into one class index per image.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import default_checkpoint_path, load_model
from .cli import common_parser, non_negative_int, positive_int
from .datasets import load_dataset
from .errors import UserError
from .runtime import resolve_device, seed_everything

MAX_IMAGE_PIXELS = 50_000_000  # larger files are refused rather than decoded


def checkpoint_parser(script):
    """Parent parser of a script that loads a checkpoint: the common flags, checkpoint, out."""
    parser = common_parser()
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to load (default: "
                             "outputs/checkpoints/<dataset>_<arch>.pt)")
    parser.add_argument("--out", default=f"outputs/{script}",
                        help=f"folder for the outputs (default: outputs/{script})")
    return parser


def method_parser(script):
    """Parent parser of a script that explains chosen images: checkpoint flags plus images."""
    parser = checkpoint_parser(script)
    parser.add_argument("--index", type=non_negative_int, nargs="+", default=[0, 1, 2],
                        help="indices into the test split (default: 0 1 2)")
    parser.add_argument("--image", nargs="+", default=None,
                        help="image files instead of --index (converted and resized to the "
                             "model's input)")
    parser.add_argument("--target", default="pred",
                        help="class to explain: pred, true, a class index or a class name "
                             "(default: pred)")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="images per forward pass (default: 256)")
    return parser


def checkpoint_path(args):
    """``--checkpoint``, or the default checkpoint of ``--dataset/--arch``."""
    return Path(args.checkpoint or default_checkpoint_path(args.dataset, args.arch))


def load_method_model(args):
    """Device, model (eval mode) and DatasetInfo for a method script's ``args``.

    ``--checkpoint`` wins; otherwise the default checkpoint of ``--dataset/--arch`` is used and
    must match them.
    """
    device = resolve_device(args.device)
    expected = () if args.checkpoint else (args.dataset, args.arch)
    model, info, _ = load_model(checkpoint_path(args), device, *expected)
    return device, model, info


def prepare_method(args):
    """The start of every method script: seed, load the model, select the images.

    Returns:
        (device, model, DatasetInfo, Selection).
    """
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    return device, model, info, select_inputs(args, info, device)


@dataclass
class Selection:
    """The images a script explains.

    Attributes:
        inputs: normalized (N, C, H, W) on the model's device.
        labels: (N,) true classes, -1 where unknown (image files).
        names: a short name per image for titles and file names (``test_17``, ``cat``).
        masks: (N, H, W) bool ground-truth object masks (shapes test images), else None.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    names: list
    masks: torch.Tensor = None


def select_inputs(args, info, device):
    """Turn ``--image`` files or ``--index`` test indices into a :class:`Selection`."""
    if args.image:
        images = torch.stack([load_image_file(path, info) for path in args.image])
        labels = torch.full((len(images),), -1, dtype=torch.int64)
        names = [Path(path).stem for path in args.image]
        return Selection(info.normalize(images.to(device)), labels.to(device), names)
    test_set = load_dataset(info.name, "test", args.data_dir)
    for index in args.index:
        if index >= len(test_set):
            raise UserError(f"--index {index} is past the {info.name} test split "
                            f"({len(test_set)} images, indices 0-{len(test_set) - 1})")
    index = torch.tensor(args.index)
    masks = None if test_set.masks is None else test_set.masks[index].to(device)
    return Selection(info.normalize(test_set.images[index].to(device)),
                     test_set.labels[index].to(device), [f"test_{i}" for i in args.index],
                     masks)


def load_image_file(path, info):
    """Read an image file as uint8 (C, H, W) in the model's channels and size.

    Colour is converted to grayscale for 1-channel models and grayscale to RGB for 3-channel
    ones; another size is resized (bilinear, antialiased) and a note says so on stderr.
    """
    from PIL import Image, UnidentifiedImageError

    Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
    try:
        with Image.open(path) as image:
            image = image.convert("L" if info.channels == 1 else "RGB")
    except FileNotFoundError:
        raise UserError(f"--image {path}: no such file") from None
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError) as error:
        raise UserError(f"--image {path}: not a readable image ({error})") from None
    size = (info.image_size, info.image_size)
    if image.size != size:
        print(f"note: resized {path} from {image.size[0]}x{image.size[1]} to "
              f"{size[0]}x{size[1]}", file=sys.stderr)
        image = image.resize(size, Image.Resampling.BILINEAR)
    pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8)
    return pixels.view(info.image_size, info.image_size, info.channels).permute(2, 0, 1)


def resolve_targets(spec, info, logits, labels):
    """One class index per image for ``--target``.

    Args:
        spec: ``pred`` (the predicted class), ``true`` (the label), a class index or name.
        logits: (N, classes) model outputs for the images.
        labels: (N,) true labels, -1 where unknown.

    Returns:
        (N,) int64 on the logits' device.
    """
    count = len(logits)
    if spec == "pred":
        return logits.argmax(1)
    if spec == "true":
        if (labels < 0).any():
            raise UserError("--target true needs test images with labels; image files have "
                            "none (use pred, a class index or a class name)")
        return labels.to(logits.device)
    names = {name.lower(): index for index, name in enumerate(info.classes)}
    if spec.lower() in names:
        index = names[spec.lower()]
    elif spec.lstrip("-").isdigit():
        index = int(spec)
        if not 0 <= index < len(info.classes):
            raise UserError(f"--target {spec}: class index out of range 0-{len(info.classes) - 1}")
    else:
        raise UserError(f"--target {spec}: unknown class; use pred, true, 0-"
                        f"{len(info.classes) - 1} or one of: {', '.join(info.classes)}")
    return torch.full((count,), index, dtype=torch.int64, device=logits.device)
