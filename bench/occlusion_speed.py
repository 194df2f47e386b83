"""Occlusion sensitivity cost against the model's batched inference throughput.

    python bench/occlusion_speed.py                  # both archs, shapes-sized inputs
    python bench/occlusion_speed.py --dataset mnist --images 32 --batch-size 512

The ideal cost of occlusion is (number of occluded variants) / (batched inference images/s):
every variant needs one forward pass and nothing else. The table prints the measured time, that
ideal and their ratio (issue target: <= 1.3 on a CPU). Weights do not change the speed, so the
nets are freshly initialized and no checkpoint is needed.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import model.occlusion as occ  # noqa: E402
from model.architectures import ARCHITECTURES, build_model  # noqa: E402
from model.datasets import DATASET_INFO, DATASETS  # noqa: E402
from model.engine import RECIPES  # noqa: E402
from model.runtime import keep_freed_memory, resolve_device  # noqa: E402
from train_speed import throughput  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="shapes",
                        help="input size and classes to mimic (default: shapes)")
    parser.add_argument("--images", type=int, default=16, help="images explained (default: 16)")
    parser.add_argument("--patch", type=int, default=4, help="patch side (default: 4)")
    parser.add_argument("--stride", type=int, default=1, help="patch step (default: 1)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="variants per forward pass (default: 256)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    info = DATASET_INFO[args.dataset]
    torch.manual_seed(0)
    inputs = torch.randn(args.images, info.channels, info.image_size, info.image_size,
                         device=device)
    print(f"device: {device}; {args.images} images, patch {args.patch}, stride "
          f"{args.stride}, batch {args.batch_size}")
    print("| arch | variants | occlusion time | inference img/s | ideal time | ratio |")
    print("|---|---|---|---|---|---|")
    for arch in ARCHITECTURES:
        model = build_model(arch, info.channels, len(info.classes), info.image_size,
                            RECIPES[(args.dataset, arch)].vgg_plan).to(device).eval()
        batch = torch.randn(args.batch_size, *inputs.shape[1:], device=device)
        images_per_s = throughput(model, batch, args.batch_size, train=False)
        targets = torch.zeros(args.images, dtype=torch.long, device=device)
        fill = torch.zeros_like(inputs)
        occ.compute_occlusion(model, inputs[:1], targets[:1], fill[:1], args.patch,
                              args.stride, args.batch_size)  # warm-up
        started = time.perf_counter()
        result = occ.compute_occlusion(model, inputs, targets, fill, args.patch, args.stride,
                                       args.batch_size)
        if device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - started
        variants = result.probability.numel()
        ideal = variants / images_per_s
        print(f"| {arch} | {variants} | {elapsed:.3f} s | {images_per_s:.0f} | {ideal:.3f} s "
              f"| {elapsed / ideal:.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
