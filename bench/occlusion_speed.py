"""Occlusion sensitivity: plain batched, incremental (Krypton) and approximate, side by side.

    python bench/occlusion_speed.py --arch simple vgg   # the project's nets at 32 px
    python bench/occlusion_speed.py --image-size 224 --arch vgg16 resnet18 \
        --geometry 32/16 16/8 --approximate 0.5

Per architecture and patch/stride: the plain batched occlusion (every occluded image through
the whole net) against its ideal, (occluded images) / (batched inference images/s); the exact
incremental occlusion (``--incremental``: only the changed box of each layer) with its speed-up
and the speed-up its FLOP count predicts; each approximate threshold (``--approximate TAU``)
the same way, with its map error against the exact map (mean and max |drop difference|, as a
share of the exact map's largest |drop|). "exact diff" is the incremental map's largest
difference from the plain one (the 224 px equality check), also as a share of the largest
|drop|. Weights do not change the speed, so the nets have random weights (``randomized``: no
layer an identity, logits spread like a trained net's) and need no checkpoint; the target is
the predicted class.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_speed import throughput  # noqa: E402

from model.attribution import occlusion as occ  # noqa: E402
from model.attribution.incremental import IncrementalOcclusion  # noqa: E402
from model.data.datasets import DATASET_INFO, DATASETS  # noqa: E402
from model.nets.architectures import EXAMPLE_ARCHS, build_model  # noqa: E402
from model.runtime.batching import variant_batch
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402
from model.training.recipes import RECIPES  # noqa: E402


def geometry(text):
    """argparse type: PATCH/STRIDE, e.g. 16/8."""
    patch, _, stride = text.partition("/")
    return int(patch), int(stride)


def bench_net(dataset, arch, info, size, device):
    """``arch`` built as ``dataset``'s recipe builds it (its VGG plan), random weights, eval."""
    recipe = RECIPES.get((dataset, arch))
    plan = recipe.vgg_plan if recipe is not None else "small"
    return build_model(arch, info.channels, len(info.classes), size, plan).to(device).eval()


def timed(function, device):
    started = time.perf_counter()
    result = function()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return result, time.perf_counter() - started


@torch.no_grad()
def randomized(network, inputs, spread=3.0):
    """``network`` (eval mode) with random weights made to behave like a trained net's where
    the maps can tell: BatchNorm statistics and affine weights drawn at random, so no layer is
    the identity it is at initialization, and the last Linear layer scaled so the logits on
    ``inputs`` spread with standard deviation ``spread`` over the classes (at initialization
    they are nearly equal, every probability about 1 / classes and every drop too small to
    compare maps by). Returns the predicted classes, the targets to explain."""
    generator = torch.Generator().manual_seed(0)
    for module in network.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator))
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
    last = [module for module in network.modules() if isinstance(module, torch.nn.Linear)][-1]
    factor = spread / float(network(inputs).std(1).mean())
    last.weight.mul_(factor)
    if last.bias is not None:
        last.bias.mul_(factor)
    return network(inputs).argmax(1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="shapes",
                        help="channels, classes and (without --image-size) the input size to "
                             "mimic (default: shapes)")
    parser.add_argument("--image-size", type=int, default=None,
                        help="input side in px (default: the dataset's)")
    parser.add_argument("--arch", nargs="+", choices=EXAMPLE_ARCHS, default=list(EXAMPLE_ARCHS),
                        help="architectures (default: all)")
    parser.add_argument("--images", type=int, default=None,
                        help="images explained (default: 16 up to 64 px, else 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random images "
                        "(default: 0)")
    parser.add_argument("--geometry", type=geometry, nargs="+", default=[(4, 1)],
                        help="PATCH/STRIDE settings (default: 4/1)")
    parser.add_argument("--approximate", type=float, nargs="*", default=[0.5],
                        help="projective-field thresholds TAU to time (default: 0.5)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="plain occlusion: occluded images per forward pass (default: "
                             "256, at most model.runtime.batching.variant_batch's pixel "
                             "budget)")
    parser.add_argument("--float64-check", action="store_true",
                        help="instead of timing: each float32 map's distance from the float64 "
                             "plain map (what float32 rounding alone moves a map)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    info = DATASET_INFO[args.dataset]
    size = args.image_size or info.image_size
    args.images = args.images or (16 if size <= 64 else 1)
    torch.manual_seed(args.seed)
    inputs = torch.randn(args.images, info.channels, size, size, device=device)
    fill = torch.zeros_like(inputs)
    print(f"device: {device}; {args.images} image(s) of {size} px, {info.channels} channels")
    if args.float64_check:
        return float64_check(args, info, inputs, fill, size, device)
    print("| arch | patch/stride | positions | plain | plain / ideal | incremental (speed-up) "
          "| FLOP prediction | exact diff | "
          + " | ".join(f"tau {tau} (speed-up, FLOP prediction) | tau {tau} error mean / max"
                       for tau in args.approximate) + " |")
    print("|---" * (8 + 2 * len(args.approximate)) + "|")
    for arch in args.arch:
        network = bench_net(args.dataset, arch, info, size, device)
        targets = randomized(network, inputs)
        batch = torch.randn(variant_batch(args.batch_size, inputs), *inputs.shape[1:],
                            device=device)
        images_per_s = throughput(network, batch, len(batch), train=False, steps=5, warmup=1)
        for patch, stride in args.geometry:
            def run(**options):
                return occ.compute_occlusion(network, inputs, targets, fill, patch, stride,
                                             args.batch_size, **options)
            run(incremental=True)  # warm-up (and the first trace)
            plain, plain_s = timed(lambda: run(incremental=False), device)
            exact, exact_s = timed(lambda: run(incremental=True), device)
            scale = max(float(exact.pixel_drop.abs().max()), 1e-12)
            exact_diff = float((exact.pixel_drop - plain.pixel_drop).abs().max()) / scale
            positions = exact.probability[0].numel()
            ideal = args.images * positions / images_per_s
            row = (f"| {arch} | {patch}/{stride} | {positions} | {plain_s:.2f} s | "
                   f"{plain_s / ideal:.2f} | {exact_s:.2f} s ({plain_s / exact_s:.1f}x) | "
                   f"{predicted(network, inputs, patch, exact):.1f}x | {exact_diff:.1e} |")
            for tau in args.approximate:
                approximate, approximate_s = timed(lambda: run(approximate=tau), device)
                error = (approximate.pixel_drop - exact.pixel_drop).abs() / scale
                row += (f" {approximate_s:.2f} s ({plain_s / approximate_s:.1f}x, "
                        f"{predicted(network, inputs, patch, exact, tau):.1f}x) | "
                        f"{float(error.mean()):.3f} / {float(error.max()):.3f} |")
            print(row, flush=True)
    return 0


def float64_check(args, info, inputs, fill, size, device):
    """Per net and geometry: the float32 maps (plain at two batch sizes, incremental) against
    the float64 plain map, as a share of its largest |drop|: float32 rounding moves even the
    plain map by this much, so an equality bound in float32 can be no tighter."""
    print("| arch | patch/stride | plain batch 256 | plain batch 7 | incremental |")
    print("|---|---|---|---|---|")
    for arch in args.arch:
        network = bench_net(args.dataset, arch, info, size, device)
        targets = randomized(network, inputs)
        for patch, stride in args.geometry:
            def drop(net, images, **options):
                return occ.compute_occlusion(net, images, targets, fill.to(images.dtype),
                                             patch, stride, **options).pixel_drop.double()
            maps = [drop(network, inputs, batch_size=256, incremental=False),
                    drop(network, inputs, batch_size=7, incremental=False),
                    drop(network, inputs, incremental=True)]
            reference = drop(network.double(), inputs.double(), incremental=False)
            network.float()
            scale = float(reference.abs().max())
            print(f"| {arch} | {patch}/{stride} | "
                  + " | ".join(f"{float((m - reference).abs().max()) / scale:.1e}"
                               for m in maps) + " |", flush=True)
    return 0


def predicted(network, inputs, patch, result, tau=None):
    """The speed-up the conv and Linear FLOPs predict: plain / incremental."""
    plan = IncrementalOcclusion(network, inputs[:1], patch, result.tops, result.lefts, tau)
    plain, incremental, _ = plan.flops()
    return plain / incremental


if __name__ == "__main__":
    sys.exit(main())
