"""Every method on the smallest net of each torchvision family, at the net's own size (224 px).

    mkdir -p data && tar -xf ../shared/data/imagenette-val.tar -C data    # once
    python bench/families_224.py --data-dir data/imagenette               # 16 nets, every method
    python bench/families_224.py --archs squeezenet1_1 resnet18 --methods gradcam occlusion \
        --random-input

The table of docs/your-own-nets.md: one row per net (alexnet, vgg11, resnet18, ...,
convnext_tiny by default), with the default layer (``model.nets.layers.default_layer``), the
(C, H, W) of its output (that of the module the layer stands for, ``block_end``), and the
seconds per image of each registered method (``model.attribution.METHODS``) at that layer,
each called with its registered defaults (occlusion's at 224 px: patch 32, stride 16).
Score-CAM and Ablation-CAM cost one pass per channel of the layer, so their columns grow with
the layer's C: the point of the table.

Below the table, per net, the one-line notes the methods printed on stderr: where a general
path replaced a special one (incremental occlusion's layers it runs whole, or torch.fx failing
to trace the net; Ablation-CAM re-running the whole net per channel), and a method that refused
the net (CAM needs global average pooling and one Linear layer).

Each net is torchvision's ``arch`` built by ``model.nets.architectures.build_model`` at the
size of its ImageNet weights (``model.nets.zoo.torchvision_input``: 299 px for inception_v3),
random weights drawn from ``--seed`` (weights do not change the speed), in eval mode, its conv
weights channels-last (``model.runtime.device.fast_model``). The inputs are ``--images`` photos
of ``--data-dir``'s ``val/`` (ImageNet's normalization) or, with ``--random-input``, noise;
the targets are the net's predicted classes. Each method is timed over one call on all the
images, no warm-up call (a Score-CAM call can take minutes), the fastest of ``--repeats``
(the methods taking turns), divided by the number of images; a first call includes kernel
choice and memory allocation, a small part of the expensive methods' seconds.
"""
import argparse
import io
import sys
from contextlib import redirect_stderr
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.photos import seeded_photos  # noqa: E402
from bench.timing import fastest  # noqa: E402
from model.attribution import METHODS, get_method  # noqa: E402
from model.data.datasets import folder_info  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.nets.anatomy import anatomy  # noqa: E402
from model.nets.architectures import build_model  # noqa: E402
from model.nets.layers import block_end, default_layer  # noqa: E402
from model.nets.zoo import torchvision_input  # noqa: E402
from model.runtime.calibration import cpu_model_name  # noqa: E402
from model.runtime.device import fast_model, keep_freed_memory, resolve_device  # noqa: E402

# The smallest member of each torchvision CNN family, and the family's name in the table.
ARCHS = {"alexnet": "AlexNet", "vgg11": "VGG", "resnet18": "ResNet",
         "resnext50_32x4d": "ResNeXt", "wide_resnet50_2": "Wide ResNet",
         "densenet121": "DenseNet", "googlenet": "GoogLeNet", "inception_v3": "Inception v3",
         "squeezenet1_1": "SqueezeNet", "shufflenet_v2_x0_5": "ShuffleNet v2",
         "mnasnet0_5": "MNASNet", "mobilenet_v2": "MobileNet v2",
         "mobilenet_v3_small": "MobileNet v3", "efficientnet_b0": "EfficientNet",
         "regnet_x_400mf": "RegNet", "convnext_tiny": "ConvNeXt"}
CLASSES = 1000


def noise(count, size, seed):
    """``count`` images of standard normal noise, as normalized photos: (count, 3, size, size)."""
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


def family_row(arch, names, inputs_at, options, seed, device, repeats):
    """Build one net and time the methods ``names`` on it at its default layer.

    Returns:
        (row, notes): row is (family, size, layer, (C, H, W), {method: seconds per image, or
        None where the method refused the net}); notes are the methods' stderr lines, each
        prefixed with the method's name, in order and without repeats.
    """
    size = torchvision_input(arch)[0]
    torch.manual_seed(seed)
    model = fast_model(build_model(arch, 3, CLASSES, size).eval()).to(device)
    layer = default_layer(model)
    shape = tuple(anatomy(model).layers[block_end(model, layer)].shape)  # (C, H, W)
    inputs = inputs_at(size).to(device)
    with torch.no_grad():
        targets = model(inputs).argmax(1)  # (N,): the predicted classes
    info = folder_info(None, size, tuple(map(str, range(CLASSES))))
    printed = {name: io.StringIO() for name in names}
    refused = {}

    def call(name):
        with redirect_stderr(printed[name]):
            try:
                return METHODS[name](model, inputs, targets, layer=layer, info=info, **options)
            except UserError as error:  # e.g. CAM on a net without GAP + one Linear layer
                refused[name] = str(error)
                return None

    timings = fastest(repeats, device, {name: lambda name=name: call(name) for name in names})
    seconds = {name: None if name in refused else timings[name][0] / len(inputs)
               for name in names}
    notes = []
    for name in names:
        lines = printed[name].getvalue().splitlines() + (
            [f"refused: {refused[name]}"] if name in refused else [])
        for line in lines:
            note = f"{name}: {line.strip()}"
            if line.strip() and note not in notes:
                notes.append(note)
    family = ARCHS.get(arch, type(model).__name__)
    return (f"{family} ({arch})", size, layer, shape, seconds), notes


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS),
                        help=f"torchvision architectures (default: {' '.join(ARCHS)})")
    parser.add_argument("--methods", nargs="+", default=None,
                        help="registered methods to time (default: all of them, "
                             "model.attribution.METHODS)")
    parser.add_argument("--data-dir", default="data/imagenette",
                        help="class folders with val/<class>/* (default: data/imagenette)")
    parser.add_argument("--images", type=int, default=1,
                        help="photos (or noise images) per call (default: 1)")
    parser.add_argument("--random-input", action="store_true",
                        help="standard normal noise instead of photos (default: photos)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per pass of the perturbation methods (default: each "
                             "method's registered default)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random weights and the photos drawn (default: 0)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="timed calls of each method, no warm-up, the fastest shown "
                             "(default: 1)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if min(args.images, args.repeats) < 1:
            raise UserError("--images and --repeats must be at least 1")
        if args.batch_size is not None and args.batch_size < 1:
            raise UserError("--batch-size must be at least 1")
        names = [get_method(name).name for name in args.methods or METHODS]
        keep_freed_memory()  # as every script does (model.cli.run)
        device = resolve_device(args.device)
        options = {} if args.batch_size is None else {"batch_size": args.batch_size}
        loaded = {}  # size -> inputs: Inception v3 reads 299 px, the others 224

        def inputs_at(size):
            if size not in loaded:
                loaded[size] = (noise(args.images, size, args.seed) if args.random_input else
                                seeded_photos(args.data_dir, args.images, size, args.seed))
            return loaded[size]

        print(f"CPU: {cpu_model_name()}; device: {device}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads")
        print(f"{args.images} {'noise image' if args.random_input else 'photo'}"
              f"{'s' if args.images > 1 else ''} per call, random weights (seed {args.seed}), "
              f"channels-last, batch size "
              f"{args.batch_size or 'of each method (registered default)'}; seconds per image, "
              f"the fastest of {args.repeats} call{'s' if args.repeats > 1 else ''}, "
              f"no warm-up\n")
        print("| family (net) | size | default layer | (C, H, W) | " + " | ".join(names) + " |")
        print("|---|---|---|---|" + "---|" * len(names), flush=True)
        notes = {}
        for arch in args.archs:  # each row as soon as it is measured: a long run shows progress
            (label, size, layer, shape, seconds), notes[label] = family_row(
                arch, names, inputs_at, options, args.seed, device, args.repeats)
            cells = ["—" if seconds[name] is None else f"{seconds[name]:.3f}" for name in names]
            print(f"| {label} | {size} | {layer} | ({', '.join(map(str, shape))}) | "
                  + " | ".join(cells) + " |", flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print()
    for label, lines in notes.items():  # one line per note: what fell back, what refused
        for line in lines or ["nothing printed: every method ran its own path"]:
            print(f"- {label}, {line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
