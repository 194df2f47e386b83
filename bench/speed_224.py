"""The methods at 224 px against the passes through the net they need (issue 14's targets).

    python bench/speed_224.py                    # resnet18: about 10 minutes on 2 CPU cores
    python bench/speed_224.py --arch vgg16 --folder-images 0

A freshly initialized torchvision net (weights do not change the speed) and 8 random images:
- Grad-CAM against one forward + backward of the same batch (target: <= 1.3x);
- occlusion (the 224 px default: patch 32, stride 16, 169 positions) and Score-CAM against
  their forward passes at the best batch size's inference throughput (target: <= 1.3x);
- max activation search over a generated folder of JPEG photos (``--dataset imagefolder``,
  decoded by DataLoader workers) against a plain DataLoader + forward to the same layer over
  the same files (target: >= 0.8x), and the peak memory of a process that scans 2,000 and of
  one that scans 20,000 of them (the top-k state is channels x k: flat).
"""
import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from train_speed import throughput  # noqa: E402

from model.attribution import METHODS  # noqa: E402
from model.data.batches import iterate_batches  # noqa: E402
from model.data.datasets import folder_info, load_dataset  # noqa: E402
from model.evaluation.cost import measure_cost  # noqa: E402
from model.nets.architectures import build_model  # noqa: E402
from model.nets.layers import (
    conv_layer_names,
    layer_output,  # noqa: E402
)
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402
from model.units.activation_search import search_top_activations  # noqa: E402

SIZE = 224
BATCH_SIZES = (8, 16, 32, 64)


def best_of(repeats, function, *args, **kwargs):
    """The shortest of ``repeats`` timed calls, in seconds, and the last call's result."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        result = function(*args, **kwargs)
        times.append(time.perf_counter() - started)
    return min(times), result


def forward_backward(model, inputs, targets):
    """One forward pass and the backward pass of the target scores to the inputs."""
    inputs = inputs.clone().requires_grad_(True)
    scores = model(inputs)[torch.arange(len(inputs)), targets]
    return torch.autograd.grad(scores.sum(), inputs)[0]


def timed_method(name, model, inputs, targets, layer):
    """(seconds, forward images) of one call of a registered method, with its defaults (at
    224 px occlusion's are patch 32, stride 16)."""
    method = METHODS[name]
    options = {"layer": layer} if "layer" in method.needs else {}
    if "info" in method.needs:
        options["info"] = folder_info(None, SIZE, tuple(map(str, range(1000))))
    method(model, inputs[:1], targets[:1], **options)  # warm-up
    with measure_cost(model, inputs.device) as cost:
        method(model, inputs, targets, **options)
    return cost.seconds, cost.forward_images


def write_photo_folder(root, count, classes=10, seed=0):
    """``count`` 256 x 256 JPEGs in ``root/val/<class>/`` (colour ramps over one of 16 noise
    textures, about the size of a photo's JPEG), written once and reused."""
    done = root / f".complete_{count}"
    if done.exists():
        return
    rng = np.random.default_rng(seed)
    textures = rng.normal(0, 12, (16, 256, 256, 3)).astype(np.float32)
    ramp = np.linspace(0, 1, 256, dtype=np.float32)[None, :, None]
    for index in range(count):
        folder = root / "val" / f"class{index % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        low, high = rng.uniform(0, 255, (2, 1, 1, 3)).astype(np.float32)
        pixels = low + (high - low) * ramp + textures[index % 16]
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(
            folder / f"{index:06d}.jpg", quality=85)
    done.touch()


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def plain_scan(model, layer, dataset, batch_size, device):
    for inputs, _ in iterate_batches(dataset, batch_size, device):
        layer_output(model, layer, inputs)


def scan_memory(args, count):
    """The peak memory (max RSS, MiB) of a fresh process that scans ``count`` folder images
    at the first conv layer (the largest activations), as max_activation_search.py does."""
    command = [sys.executable, __file__, "--arch", args.arch, "--folder-dir", args.folder_dir,
               "--workers", str(args.workers), "--batch-size", str(args.batch_size),
               "--device", args.device, "--scan-only", str(count)]
    return float(subprocess.run(command, capture_output=True, text=True,
                                check=True).stdout.split()[-1])


def folder_rows(args, model, device):
    """Max activation search over a folder: the speed ratio, and the peak memory of scans of
    2,000 and ``--folder-images`` images, each in its own process."""
    folder = photo_folder(args)
    small = folder.spread(2000)
    layer = conv_layer_names(model)[-1]
    plain, _ = best_of(1, plain_scan, model, layer, small, args.batch_size, device)
    scan, _ = best_of(1, search_top_activations, model, small, layer, 9, "max",
                      args.batch_size, device)
    print(f"| max activation search, {layer}, {len(small):,} folder images | {scan:.1f} s | "
          f"DataLoader + forward: {plain:.1f} s | {plain / scan:.2f} (>= 0.8: speed) |")
    memory = {count: scan_memory(args, count) for count in (len(small), len(folder))}
    print(f"| peak memory, {conv_layer_names(model)[0]} scan, own process, "
          f"{args.workers} workers | " + "; ".join(f"{count:,} images: {mib:.0f} MiB"
                                                 for count, mib in memory.items())
          + " | | flat |", flush=True)


def photo_folder(args):
    write_photo_folder(Path(args.folder_dir), args.folder_images)
    info = folder_info(args.folder_dir, SIZE, tuple(f"class{c}" for c in range(10)))
    return load_dataset("imagefolder", "test", args.folder_dir, info=info, workers=args.workers)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--images", type=int, default=8, help="images explained (default: 8)")
    parser.add_argument("--batch-size", type=int, default=64,
                        help="batch of the folder scans (default: 64)")
    parser.add_argument("--folder-images", type=int, default=20000,
                        help="images of the generated folder, 0: no folder rows "
                             "(default: 20000)")
    parser.add_argument("--folder-dir", default="/tmp/cnn_viz_bench_folder",
                        help="where the generated folder is written (default: "
                             "/tmp/cnn_viz_bench_folder)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (default: 2)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--scan-only", type=int, default=None, metavar="N",
                        help="(internal) scan N folder images, print the peak memory")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    torch.manual_seed(0)
    model = build_model(args.arch, 3, 1000, SIZE).to(device).eval()
    if args.scan_only:
        search_top_activations(model, photo_folder(args).spread(args.scan_only),
                               conv_layer_names(model)[0], 9, "max", args.batch_size, device)
        print(f"{peak_rss_mib():.0f}")
        return 0
    for parameter in model.parameters():
        parameter.requires_grad_(False)  # the methods differentiate the inputs only
    print(f"device: {device}, {torch.get_num_threads()} threads; {args.arch} at {SIZE} px, "
          f"{args.images} images")
    print("| what | time | baseline | ratio (target) |")
    print("|---|---|---|---|")
    if args.folder_images:
        folder_rows(args, model, device)
    inputs = torch.randn(args.images, 3, SIZE, SIZE, device=device)
    targets = torch.zeros(args.images, dtype=torch.long, device=device)
    layer = conv_layer_names(model)[-1]
    forward_backward(model, inputs, targets)  # warm-up
    baseline, _ = best_of(3, forward_backward, model, inputs, targets)
    gradcam = min(timed_method("gradcam", model, inputs, targets, layer)[0] for _ in range(3))
    print(f"| Grad-CAM, {layer} | {gradcam:.3f} s | forward + backward: {baseline:.3f} s | "
          f"{gradcam / baseline:.2f} (<= 1.3) |", flush=True)
    rates = {batch: throughput(model, torch.randn(batch, 3, SIZE, SIZE, device=device), batch,
                               train=False, steps=3, warmup=1) for batch in BATCH_SIZES}
    best = max(rates, key=rates.get)
    print(f"| inference | | best batch {best}: {rates[best]:.1f} img/s ("
          + ", ".join(f"{b}: {r:.1f}" for b, r in rates.items()) + ") | |", flush=True)
    for name in ("occlusion", "scorecam"):
        seconds, forwards = timed_method(name, model, inputs, targets, layer)
        ideal = forwards / rates[best]
        print(f"| {name} | {seconds:.1f} s | {forwards} forward images: {ideal:.1f} s | "
              f"{seconds / ideal:.2f} (<= 1.3) |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
