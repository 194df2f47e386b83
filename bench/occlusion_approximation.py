"""How far approximate incremental occlusion (``--approximate TAU``) is from the exact map.

    python bench/occlusion_approximation.py --checkpoint outputs/checkpoints/cifar10_vgg.pt \
        --data-dir data/cifar10-jpg
    python bench/occlusion_approximation.py                # shapes: with the pointing game
    python bench/occlusion_approximation.py --arch vgg16 --image-size 224 \
        --data-dir data/cifar10-jpg --images 4             # random weights, photos at 224 px
    python bench/occlusion_approximation.py --arch mobilenet_v2 \
        --weights ../shared/data/mobilenet_v2_imagenet.pth --data-dir data/imagenette
    python bench/occlusion_approximation.py --checkpoint outputs/checkpoints/imagenette_alexnet.pt \
        --data-dir data/imagenette                         # a net trained on class folders

Krypton's projective-field threshold (Nakandala et al. 2019, sec. 4.1) cuts each conv or pool
layer's changed box to TAU of its map's side. Per TAU, on the first ``--images`` test images
(target: the true class; a random net's top class): the map error against the exact incremental
map (mean and max |drop difference| as a share of each image's largest exact |drop|), the deletion
AUC (RISE;
lower: the map finds what the net uses) and, where the dataset has object masks (shapes), the
pointing game, each beside the exact map's; and the time. At 224 px the net is torchvision's
with random weights (no ImageNet weights can be downloaded here; ``randomized``: logits spread
as a trained net's), on test photos resized to 224 px: the error and speed,
not the maps' meaning, are what that row measures. ``--weights`` (with ``--arch``) loads a
trained torchvision net instead, on the class folders of ``--data-dir``. An image folder's
test split is sorted by class, so its images are taken at an even stride over the split.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from occlusion_speed import randomized  # noqa: E402

from model.attribution import occlusion as occ  # noqa: E402
from model.data.datasets import DATASET_INFO, load_dataset  # noqa: E402
from model.evaluation.faithfulness import area_under_curve, deletion_insertion_curves  # noqa: E402
from model.evaluation.ground_truth import pointing_hits  # noqa: E402
from model.nets.architectures import EXAMPLE_ARCHS, build_model  # noqa: E402
from model.nets.checkpoint import (  # noqa: E402
    default_checkpoint_path,
    load_model,
    model_from_weights,
)
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(default_checkpoint_path("shapes", "vgg")),
                        help="a trained checkpoint (default: the shapes vgg one)")
    parser.add_argument("--arch", choices=EXAMPLE_ARCHS, default=None,
                        help="instead of --checkpoint: this net with random weights")
    parser.add_argument("--weights", default=None,
                        help="with --arch: a trained torchvision state dict, explained on the "
                             "class folders of --data-dir (ImageNet input)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="with --arch: resize the test images to this side")
    parser.add_argument("--data-dir", default="data", help="the dataset's files (default: data)")
    parser.add_argument("--images", type=int, default=32, help="test images (default: 32)")
    parser.add_argument("--patch", type=int, default=None, help="default: the script's")
    parser.add_argument("--stride", type=int, default=None, help="default: the script's")
    parser.add_argument("--tau", type=float, nargs="+", default=[0.25, 0.5, 0.75],
                        help="thresholds (default: 0.25 0.5 0.75)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    keep_freed_memory()
    device = resolve_device(args.device)
    trained = args.weights or not args.arch
    if args.weights:
        network, info = model_from_weights(args.arch, args.weights, "imagefolder", None, device,
                                           args.data_dir)
        source = f"{args.arch} ({args.weights})"
    elif args.arch:
        info = DATASET_INFO["cifar10"]
        network = build_model(args.arch, 3, 1000, args.image_size).to(device).eval()
        source = f"{args.arch}, random weights"
    else:
        network, info, _ = load_model(args.checkpoint, device)
        source = args.checkpoint
    folder = info.name == "imagefolder"
    test_set = load_dataset(info.name, "test", args.data_dir, download=False,
                            info=info if folder else None)
    chosen = (torch.linspace(0, len(test_set) - 1, args.images).round().long() if folder
              else torch.arange(args.images))
    inputs = info.normalize(test_set.images[chosen].to(device))
    targets = test_set.labels[chosen].to(device)
    masks = getattr(test_set, "masks", None)
    masks = None if masks is None or not trained else masks[chosen].to(device)
    if args.image_size:
        inputs = F.interpolate(inputs, size=args.image_size, mode="bilinear",
                               align_corners=False)
    if not trained:  # a random net knows no CIFAR-10 class: explain its own top class
        targets = randomized(network, inputs)
    patch, stride = occ.occlusion_geometry(inputs.shape[-1], args.patch, args.stride)
    fill = occ.baseline_images(inputs, info, "blur", patch)
    print(f"{source}: {len(inputs)} {info.name} test images at {inputs.shape[-1]} px, "
          f"patch {patch}, stride {stride}, blur fill, target the "
          f"{'true' if trained else 'top'} class")
    print("| map | time | error mean / max (vs plain for exact, vs exact for tau) "
          "| deletion AUC | pointing |")
    print("|---|---|---|---|---|")

    def run(**options):
        started = time.perf_counter()
        result = occ.compute_occlusion(network, inputs, targets, fill, patch, stride,
                                       **options)
        return result.pixel_drop, time.perf_counter() - started

    plain, plain_s = run(incremental=False)
    exact, exact_s = run(incremental=True)
    scale = exact.flatten(1).abs().max(1).values.clamp_min(1e-12)[:, None, None]
    report("plain (every occluded image whole)", plain, plain_s, None, network, inputs,
           targets, masks)
    report("incremental, exact", exact, exact_s, (exact - plain).abs() / scale, network,
           inputs, targets, masks)
    for tau in args.tau:
        approximate, seconds = run(approximate=tau)
        error = (approximate - exact).abs() / scale
        report(f"tau {tau}", approximate, seconds, error, network, inputs, targets, masks)
    return 0


def report(name, maps, seconds, error, network, inputs, targets, masks):
    deletion = area_under_curve(deletion_insertion_curves(network, inputs, targets, maps,
                                                          "deletion")).mean()
    pointing = "-" if masks is None else f"{pointing_hits(maps, masks).float().mean():.1%}"
    errors = "-" if error is None else f"{error.mean():.4f} / {error.max():.3f}"
    print(f"| {name} | {seconds:.2f} s | {errors} | {deletion:.4f} | {pointing} |",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())
