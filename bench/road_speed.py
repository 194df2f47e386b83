"""ROAD's linear imputation at 224 px on CAM-like holes: the solver before issue 41 against now.

    python bench/road_speed.py                           # 2 photos of data/imagenette, CPU
    python bench/road_speed.py --images 4 --repeats 3 --device cuda

Per photo and order (MoRF, LeRF): the 9 masks ROAD makes (``road.removal_masks`` with
``ROAD_PERCENTAGES``) from a CAM-like map, imputed at once (27 systems: 9 masks x 3 channels)
by each solver at the default tolerance (relative residual 1e-5):

- before: plain conjugate gradients from a cascadic-multigrid start (the imputation at half
  the resolution, recursively, brought back up), the solver of ``model/evaluation/road.py``
  until issue 41, copied below (:func:`before_imputation`) as the reference;
- after: ``road.linear_imputation``, conjugate gradients preconditioned by a multigrid V-cycle.

The columns: the seconds of each (the fastest of ``--repeats``, the two taking turns, after one
untimed call each), the speed-up, the conjugate-gradient steps at 224 px (the slowest
system's, and the steps summed over the systems: the work, a 224 px pass over one system
each), the largest |difference| between the two imputations, and each one's largest
|difference| from a float64 solve to relative residual 1e-12 (the exact answer, to ~1e-10), in
the normalized photos' units (ImageNet's std: 1 unit is ~0.23 of the pixel range; ROAD's noise
is 0.01 of it). Both meet the same stopping rule, so each is within tolerance / lambda_min(A)
||b|| of the exact answer, and from the other by twice that at most.

The maps are what Grad-CAM gives at MobileNetV2's 7 x 7 layer, in shape: a random 7 x 7 map,
ReLU'd, upsampled bilinearly to 224 px: smooth blobs, large connected holes at every
percentage. The photos: ``--images`` of ``--data-dir``'s ``val/`` (``bench.photos``), or, when
the folder is missing, random smooth images (7 x 7 noise upsampled).
"""
import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.photos import seeded_photos  # noqa: E402
from bench.timing import fastest  # noqa: E402
from model.evaluation import road  # noqa: E402
from model.runtime.calibration import cpu_model_name  # noqa: E402
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402

SIDE = 224
MAP_SIDE = 7  # MobileNetV2's last feature maps at 224 px

# BEFORE ---------------------------------------------------------------------------------------
# model/evaluation/road.py's solver until issue 41, kept only here, as the reference "before".
# The one change: ``record`` collects the number of unsolved systems at each 224-px step.

COARSE_FROM_SIDE = 32
COARSE_TOLERANCE = 1e-3


def before_imputation(inputs, removed, tolerance=1e-5, max_iterations=None, record=None):
    """The old ``linear_imputation``: conjugate gradients, from :func:`before_coarse_guess`
    on images of ``COARSE_FROM_SIDE`` px and more."""
    count, channels, height, width = inputs.shape
    max_iterations = max_iterations or 4 * (height + width)
    guess = (before_coarse_guess(inputs, removed, tolerance)
             if min(height, width) >= COARSE_FROM_SIDE else None)
    mask = removed.to(inputs.dtype).repeat_interleave(channels, 0)[None]
    mask = mask.contiguous(memory_format=torch.channels_last)
    values = inputs.reshape(1, -1, height, width).contiguous(memory_format=torch.channels_last)
    degree = road.neighbour_sum(torch.ones_like(values[:, :1]))
    right = mask * road.neighbour_sum((1 - mask) * values)

    def apply(x):
        return road.neighbour_sum(x).mul_(-1).addcmul_(degree, x).mul_(mask_left)

    def dot(a, b):
        return (a * b).sum((-2, -1), keepdim=True)

    def keep(tensor, systems):
        return tensor[:, systems].contiguous(memory_format=torch.channels_last)

    solution = torch.zeros_like(values)
    left = torch.arange(values.shape[1], device=inputs.device)
    mask_left = mask
    if guess is None:
        x, residual = torch.zeros_like(values), right.clone()
    else:
        x = (guess.reshape(1, -1, height, width) * mask).contiguous(
            memory_format=torch.channels_last)
        residual = right - apply(x)
    direction = residual.clone()
    squared = dot(residual, residual)
    enough = tolerance ** 2 * dot(right, right)
    for step in range(max_iterations):
        active = squared > enough
        if step % 8 == 0:
            done = ~active.flatten()
            solution[:, left[done]] = x[:, done]
            left, unsolved = left[~done], ~done
            mask_left, x, residual, direction, squared, enough, active = (
                keep(t, unsolved) for t in (mask_left, x, residual, direction, squared, enough,
                                            active))
            if not len(left):
                break
        if record is not None:
            record.append(int(active.sum()))
        product = apply(direction)
        length = torch.where(active, squared / dot(direction, product), 0.0)
        x.addcmul_(length, direction)
        residual.addcmul_(length, product, value=-1)
        new_squared = dot(residual, residual)
        direction.mul_(torch.where(active, new_squared / squared, 0.0)).add_(residual)
        squared = torch.where(active, new_squared, squared)
    solution[:, left] = x
    return torch.where(mask.bool(), solution, values).reshape(count, channels, height, width)


def before_coarse_guess(inputs, removed, tolerance):
    """The old ``coarse_guess``: the imputation at half the resolution, upsampled."""
    kept = (~removed)[:, None].to(inputs.dtype)
    weight = F.avg_pool2d(kept, 2, ceil_mode=True)
    coarse_inputs = F.avg_pool2d(inputs * kept, 2, ceil_mode=True) / weight.clamp_min(1e-12)
    coarse = before_imputation(coarse_inputs, weight[:, 0] == 0,
                               max(tolerance, COARSE_TOLERANCE))
    return F.interpolate(coarse, size=inputs.shape[-2:], mode="bilinear", align_corners=False)

# ------------------------------------------------------------------------------------ BEFORE


@contextmanager
def counted_steps(record):
    """Within: each conjugate-gradient step of ``road.linear_imputation`` appends its number
    of unsolved systems to ``record`` (one V-cycle at full size per step and system)."""
    real_v_cycle = road.v_cycle

    def counting(levels, residual, depth=0):
        if depth == 0:
            record.append(residual.shape[1])
        return real_v_cycle(levels, residual, depth)

    road.v_cycle = counting
    try:
        yield record
    finally:
        road.v_cycle = real_v_cycle


def cam_like_maps(count, generator):
    """(count, SIDE, SIDE): random 7 x 7 maps, ReLU'd and upsampled bilinearly, as Grad-CAM's
    at a 7 x 7 layer."""
    maps = torch.randn(count, 1, MAP_SIDE, MAP_SIDE, generator=generator).relu()
    maps = F.interpolate(maps, size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return maps[:, 0]  # (count, SIDE, SIDE)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", type=Path, default=Path("data/imagenette"),
                        help="image folder with val/ (default: data/imagenette; random smooth "
                             "images when missing)")
    parser.add_argument("--images", type=int, default=2, help="photos (default: 2)")
    parser.add_argument("--repeats", type=int, default=2,
                        help="timed calls of each solver, the fastest shown (default: 2)")
    parser.add_argument("--seed", type=int, default=0, help="photos and maps (default: 0)")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's, one per core)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(args.seed)
    if (args.data_dir / "val").is_dir():
        inputs, source = seeded_photos(args.data_dir, args.images, SIDE, args.seed), args.data_dir
    else:
        inputs = F.interpolate(torch.randn(args.images, 3, MAP_SIDE, MAP_SIDE,
                                           generator=generator), size=(SIDE, SIDE),
                               mode="bilinear", align_corners=False)
        source = "random smooth images"
    inputs = inputs.to(device)
    maps = cam_like_maps(args.images, generator)
    print(f"{args.images} photos of {source}, {SIDE} px; {device} "
          f"({cpu_model_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}"
          f", {torch.get_num_threads()} threads), torch {torch.__version__}")
    print("| photo | order | before s | after s | speed-up | before CG steps (sum) "
          "| after CG steps (sum) | max |before - after| | before: max error | after: max "
          "error |")
    print("|---" * 10 + "|")
    totals = [0.0, 0.0]
    for n in range(args.images):
        for order in road.ORDERS:
            removed = road.removal_masks(maps[n:n + 1], road.ROAD_PERCENTAGES, order,
                                         torch.Generator().manual_seed(args.seed))
            removed = removed[0].to(device)  # (P, SIDE, SIDE)
            images = inputs[n:n + 1].expand(len(removed), -1, -1, -1)
            timed = fastest(args.repeats, device, {
                "before": lambda: before_imputation(images, removed),
                "after": lambda: road.linear_imputation(images, removed)}, warm_up=True)
            (before_s, before), (after_s, after) = timed["before"], timed["after"]
            before_steps, after_steps = [], []
            before_imputation(images, removed, record=before_steps)
            with counted_steps(after_steps):
                road.linear_imputation(images, removed)
            exact = road.linear_imputation(images.double(), removed, tolerance=1e-12)
            totals[0] += before_s
            totals[1] += after_s
            print(f"| {n} | {order} | {before_s:.2f} | {after_s:.2f} | "
                  f"{before_s / after_s:.1f}x | {len(before_steps)} ({sum(before_steps)}) | "
                  f"{len(after_steps)} ({sum(after_steps)}) | "
                  f"{float((before - after).abs().max()):.1e} | "
                  f"{float((before - exact).abs().max()):.1e} | "
                  f"{float((after - exact).abs().max()):.1e} |", flush=True)
    print(f"\nin all: before {totals[0]:.2f} s, after {totals[1]:.2f} s, "
          f"{totals[0] / totals[1]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
