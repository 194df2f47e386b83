"""Do Grad-CAM and occlusion point at the object? The pointing game on shapes.

    python bench/pointing.py                        # outputs/checkpoints/shapes_vgg.pt
    python bench/pointing.py --checkpoint other.pt --images 500

On the first ``--images`` correctly classified shapes test images (default 200), the maximum
of the Grad-CAM map (last conv layer, target = true class) and of the occlusion drop map
(the script's defaults: 4 px blurred patch, stride 1; and a gray patch) is looked up in the
ground-truth object mask dilated by one pixel (Zhang et al. 2016). Prints the hit rate per
method; the issue's bar is >= 90%. A uniformly random map is printed as the chance level.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.attribution import (
    METHODS,  # noqa: E402
    occlusion as occ,  # noqa: E402
)
from model.data.batches import iterate_batches  # noqa: E402
from model.data.datasets import load_dataset  # noqa: E402
from model.evaluation.ground_truth import pointing_hits  # noqa: E402
from model.nets.checkpoint import default_checkpoint_path, load_model  # noqa: E402
from model.nets.layers import conv_layer_names  # noqa: E402
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=str(default_checkpoint_path("shapes", "vgg")),
                        help="a shapes checkpoint (default: outputs/checkpoints/shapes_vgg.pt)")
    parser.add_argument("--images", type=int, default=200,
                        help="correctly classified test images to score (default: 200)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    model, info, _ = load_model(args.checkpoint, device, dataset="shapes")
    test_set = load_dataset("shapes", "test")
    with torch.no_grad():
        predictions = torch.cat([model(x).argmax(1).cpu()
                                 for x, _ in iterate_batches(test_set, 512, device)])
    chosen = (predictions == test_set.labels).nonzero()[:args.images, 0]
    inputs = info.normalize(test_set.images[chosen].to(device))
    targets = test_set.labels[chosen].to(device)
    masks = test_set.masks[chosen].to(device)
    layer = conv_layer_names(model)[-1]
    print(f"{args.checkpoint}: {len(chosen)} correctly classified shapes test images, "
          f"masks dilated by 1 px")
    print("| method | pointing hits | time |")
    print("|---|---|---|")
    started = time.perf_counter()
    maps = METHODS["gradcam"](model, inputs, targets, layer=layer)
    report(f"gradcam ({layer})", pointing_hits(maps, masks), started)
    for baseline in ("blur", "gray"):
        started = time.perf_counter()
        fill = occ.baseline_images(inputs, info, baseline, 4)
        drop = occ.compute_occlusion(model, inputs, targets, fill, 4, 1).pixel_drop
        report(f"occlusion drop (4 px {baseline}, stride 1)", pointing_hits(drop, masks),
               started)
    random_maps = torch.rand(masks.shape, generator=torch.Generator().manual_seed(0))
    report("random map (chance)", pointing_hits(random_maps.to(device), masks),
           time.perf_counter())
    return 0


def report(name, hits, started):
    print(f"| {name} | {hits.float().mean():.1%} ({int(hits.sum())}/{len(hits)}) "
          f"| {time.perf_counter() - started:.2f} s |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
