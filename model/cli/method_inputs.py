"""What a method script explains: the model, the input images, and the maps it saves.

Shared by every method script: ``method_parser`` adds the flags, ``load_method_model`` finds and
loads the checkpoint (or ``--weights``), ``select_inputs`` turns ``--index``/``--image`` into a
normalized batch, and ``save_maps`` writes a script's maps for ``--save-maps``. ``--target``
is resolved in ``model.cli.targets``.
"""
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from model.cli.arguments import common_parser, non_negative_int, positive_int
from model.cli.running import Listed
from model.cli.targets import check_target
from model.data.datasets import DATASETS, load_dataset
from model.data.image_files import load_image_file
from model.errors import UserError
from model.nets.checkpoint import default_checkpoint_path, load_model, model_from_weights
from model.nets.anatomy import layer_listing
from model.runtime.device import resolve_device, seed_everything
from model.runtime.files import (
    PLAIN_KINDS,
    check_writable_file,
    prepare_output_folder,
    save_arrays,
)

MAX_NAME_PART = 40  # characters kept of each file or folder name in an image's output name

DEFAULT_DATASET, DEFAULT_ARCH = "shapes", "vgg"


def checkpoint_parser(script):
    """Parent parser of a script that loads a checkpoint: the common flags, checkpoint, out."""
    parser = common_parser()
    parser.add_argument("--checkpoint", default=None,
                        help="checkpoint to load (default: "
                             "outputs/checkpoints/<dataset>_<arch>.pt)")
    add_weights_flags(parser)
    parser.add_argument("--out", default=f"outputs/{script}",
                        help=f"folder for the outputs (default: outputs/{script})")
    parser.add_argument_group(
        "layer names (--layer)",
        "as the net names them (model.named_modules()): conv layers, blocks (layer1.0, "
        "features.3) and stages (layer4); the default is the last spatial map before the "
        "global pooling. --layer list prints every layer of the net with its output shape and "
        "receptive field.")
    # None = not given: the default checkpoint is shapes/vgg's, and a --checkpoint is only
    # checked against --dataset/--arch when the user names them.
    parser.set_defaults(dataset=None, arch=None)
    return parser


def add_weights_flags(parser):
    """``--weights`` and ``--class-names``: a torchvision net with the user's weights."""
    parser.add_argument("--weights", default=None, metavar="FILE|DEFAULT",
                        help="instead of a checkpoint: the weights of --arch (a torchvision CNN, "
                             "timm:NAME or your own module): a state dict, a training "
                             "checkpoint that holds one (state_dict, model, model_state_dict, "
                             "net), DDP's module. or Lightning's model. keys, or a "
                             ".safetensors file; or DEFAULT for torchvision's pretrained "
                             "ImageNet weights (a download); without --dataset the input is "
                             "the net's own (224 px, 299 for Inception v3)")
    parser.add_argument("--class-names", default=None, metavar="FILE",
                        help="class names of --weights, one per line (default: ImageNet's "
                             "for 1000 outputs, imagefolder's folder names, else the "
                             "--dataset's)")


def method_parser(script, maps=None):
    """Parent parser of a script that explains chosen images: checkpoint flags plus images.

    Args:
        maps: for a script that makes one map per image, what its ``--save-maps`` file holds
            beyond the keys every such file has (:func:`save_maps`), in words for the help;
            None: the script has no ``--save-maps``.
    """
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
    if maps is None:
        parser.set_defaults(save_maps=None)
    else:
        parser.add_argument("--save-maps", metavar="FILE.npz", default=None,
                            help="also write the raw maps to FILE.npz, numbers and strings "
                                 "only (np.load needs no allow_pickle): maps (N, H, W) "
                                 f"float32, {maps}; targets (N,) int64, labels (N,) (-1: "
                                 "an image file), image_names, classes, dataset, "
                                 "image_size, checkpoint and every flag set to a number, "
                                 "a string or a list of them (default: not written)")
    return parser


def checkpoint_path(args):
    """``--checkpoint``, or the default checkpoint of ``--dataset/--arch``."""
    if args.checkpoint:
        return Path(args.checkpoint)
    return default_checkpoint_path(args.dataset or DEFAULT_DATASET, args.arch or DEFAULT_ARCH)


def load_method_model(args):
    """Device, model (eval mode) and DatasetInfo for a method script's ``args``.

    ``--checkpoint`` wins; otherwise the default checkpoint of ``--dataset/--arch`` is used.
    Either must match the ``--dataset``/``--arch`` given on the command line. The ``--out``
    folder is checked first, so that a long run cannot fail at its end.
    """
    prepare_output_folder(args.out)
    device = resolve_device(args.device)
    if args.weights or args.class_names:
        device, model, info = device, *weights_model(args, device)
    else:
        dataset, arch = args.dataset, args.arch
        if not args.checkpoint:
            dataset, arch = dataset or DEFAULT_DATASET, arch or DEFAULT_ARCH
        model, info, _ = load_model(checkpoint_path(args), device, dataset, arch)
    layers = getattr(args, "layer", None)
    if layers == "list" or layers == ["list"]:  # print the layers, then end (code 0)
        print("\n".join(layer_listing(model)))
        raise Listed
    return device, model, info


def check_weights_flags(args):
    """Refuse ``--class-names`` without ``--weights``, and ``--weights`` with ``--checkpoint``
    or without ``--arch``, before any work."""
    if args.class_names and not args.weights:
        raise UserError("--class-names names the outputs of --weights FILE; a checkpoint "
                        "stores its class names")
    if args.weights and args.checkpoint:
        raise UserError("give --checkpoint or --weights, not both")
    if args.weights and args.arch is None:
        raise UserError("--weights needs --arch: a torchvision CNN (resnet50, ...), "
                        "timm:NAME or your own path/to/net.py:Name")


def weights_model(args, device):
    """Model and DatasetInfo of ``--weights`` (see ``model.checkpoint.model_from_weights``)."""
    check_weights_flags(args)
    return model_from_weights(args.arch, args.weights, args.dataset, args.class_names, device,
                              args.data_dir, args.image_size)


def prepare_method(args):
    """The start of every method script: seed, load the model, select the images.

    Returns:
        (device, model, DatasetInfo, Selection).
    """
    seed_everything(args.seed)
    if args.save_maps:  # like --out, before any work
        check_writable_file(args.save_maps, "--save-maps")
    device, model, info = load_method_model(args)
    check_target(args.target, info, labelled=not args.image)
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
        names = image_names(args.image)
        return Selection(info.normalize(images.to(device)), labels.to(device), names)
    if not has_test_split(info):
        raise UserError(f"there is no {info.name} test split to take --index from: give "
                        "--image FILES, or the --dataset the weights were trained on")
    test_set = load_split(info, "test", args)
    for index in args.index:
        if index >= len(test_set):
            raise UserError(f"--index {index} is past the {info.name} test split "
                            f"({len(test_set)} images, indices 0-{len(test_set) - 1})")
    index = torch.tensor(args.index)
    masks = None if test_set.masks is None else test_set.masks[index].to(device)
    return Selection(info.normalize(test_set.images[index].to(device)),
                     test_set.labels[index].to(device), [f"test_{i}" for i in args.index],
                     masks)


def save_maps(args, info, selection, maps, targets, **arrays):
    """Write ``--save-maps``: one raw map per image, its target and the run's settings.

    The keys: ``maps`` (N, H, W) float32 and ``targets`` (N,) int64; ``labels`` (N,) int64
    (-1: an image file), ``image_names``, ``classes``, ``dataset``, ``image_size`` and
    ``checkpoint`` (absent for ``--weights``); then ``arrays``, the script's own (its method,
    options it resolved, more maps); and every flag of ``vars(args)`` whose value is a number,
    a string or a list of them (flags left unset, None, are not stored). Tensors go to the
    CPU; strings become unicode arrays, so ``np.load`` reads the file without pickle.

    Args:
        maps: (N, H, W) tensor; targets: (N,) tensor.
        arrays: more named values (tensors, numbers, strings or lists of them).
    Returns:
        the path written (``args.save_maps``).
    """
    def plain(value):
        return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value

    flags = {name: value for name, value in vars(args).items()
             if np.asarray(value).dtype.kind in PLAIN_KINDS}
    common = dict(labels=plain(selection.labels).astype(np.int64), image_names=selection.names,
                  classes=list(info.classes), dataset=info.name, image_size=info.image_size)
    if not args.weights:
        common["checkpoint"] = str(checkpoint_path(args))
    own = {name: plain(value) for name, value in arrays.items()}
    written = save_arrays({**flags, **common, **own, "maps": plain(maps).astype(np.float32),
                           "targets": plain(targets).astype(np.int64)}, args.save_maps)
    print(f"wrote {written}")
    return written


def load_split(info, split, args):
    """A split of the model's dataset from ``--data-dir``; an image folder in the model's
    classes and input size, decoded by ``--workers`` processes."""
    return load_dataset(info.name, split, args.data_dir, info=info, workers=args.workers)


def has_test_split(info):
    """Whether the model's dataset has a test split here (ImageNet weights come without)."""
    return info.name in DATASETS


def image_names(paths):
    """A distinct short name per image file, for figure titles and output file names.

    The name is the file's stem (``cats/1.jpg`` -> ``1``). Where stems clash, just enough of
    the folders above is put in front to tell the files apart (``cats/1.jpg`` and
    ``dogs/1.jpg`` -> ``cats_1`` and ``dogs_1``), and files of one folder that differ only in
    their extension keep it (``x_png``, ``x_jpg``); the same file named twice gets ``_2``.
    Each part is cut to ``MAX_NAME_PART`` characters, so that output names stay within the
    file system's limit.
    """
    files = [Path(os.path.abspath(path)) for path in paths]

    def folders(file):
        return [part[:MAX_NAME_PART] for part in file.parts[1:-1]]

    def name(file):
        stem, mine = file.stem[:MAX_NAME_PART], folders(file)
        rivals = {other for other in files if other != file and other.stem == file.stem}
        elsewhere = [folders(other) for other in rivals if folders(other) != mine]
        depth = next((d for d in range(len(mine) + 1)
                      if all(chain[len(chain) - d:] != mine[len(mine) - d:]
                             for chain in elsewhere)), len(mine))
        parts = mine[len(mine) - depth:] + [stem]
        if len(elsewhere) < len(rivals):  # a rival in the same folder: only the suffix differs
            parts.append(file.suffix.lstrip(".")[:MAX_NAME_PART])
        return "_".join(parts)

    names, counts = [], {}
    for file in files:  # number repeats (the same file twice, or a name that happens to clash)
        text = name(file)
        counts[text] = counts.get(text, 0) + 1
        names.append(text if counts[text] == 1 else f"{text}_{counts[text]}")
    return names
