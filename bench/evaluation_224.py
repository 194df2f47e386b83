"""Where the time of an evaluation (``evaluate_attributions.py``) goes at 224 px.

    python bench/evaluation_224.py --weights ../shared/data/mobilenet_v2_imagenet.pth \
        --data-dir data/imagenette                  # the trained MobileNetV2 on photos
    python bench/evaluation_224.py                  # random weights, random images

For each registered method one table row: seconds per image of its map, of its deletion and
insertion curves, of its ROAD curves (imputation and passes), of its Average Drop passes, and
what the randomization check costs it per sanity image (its map once per randomization
stage); then the totals of an evaluation of ``--num-images`` images with ``--sanity-images``
in the randomization check, as ``evaluate_attributions.py`` runs it. The numbers are the
evaluation's own functions timed on ``--images`` images.
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.attribution import METHODS  # noqa: E402
from model.attribution.cam import cam_layer_applies  # noqa: E402
from model.data.datasets import DatasetInfo, load_dataset  # noqa: E402
from model.evaluation.faithfulness import (  # noqa: E402
    RANDOMIZATION_POINTS,
    deletion_insertion_curves,
    evaluated_stages,
    explanation_map_probabilities,
    randomization_stages,
)
from model.evaluation.road import ORDERS, road_curves  # noqa: E402
from model.evaluation.scoring import Settings, attribution_maps  # noqa: E402
from model.nets.architectures import build_model  # noqa: E402
from model.nets.checkpoint import model_from_weights  # noqa: E402
from model.nets.layers import conv_layer_names  # noqa: E402
from model.nets.zoo import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_SIZE,
    IMAGENET_STD,
)
from model.runtime.device import keep_freed_memory, seed_everything  # noqa: E402


def seconds(function):
    started = time.perf_counter()
    result = function()
    return time.perf_counter() - started, result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="mobilenet_v2")
    parser.add_argument("--weights", default=None, help="a state dict (default: random)")
    parser.add_argument("--data-dir", default=None,
                        help="an image folder with val/ (default: random images)")
    parser.add_argument("--images", type=int, default=2, help="images timed (default: 2)")
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--num-images", type=int, default=32,
                        help="images of the evaluation the totals are for (default: 32)")
    parser.add_argument("--sanity-images", type=int, default=16,
                        help="its randomization check's images (default: 16)")
    args = parser.parse_args(argv)
    keep_freed_memory()
    seed_everything(0)
    if args.weights:
        model, info = model_from_weights(args.arch, args.weights, "imagefolder" if args.data_dir
                                         else None, data_dir=args.data_dir)
    else:
        model = build_model(args.arch, 3, 1000, IMAGENET_SIZE).eval()
        info = DatasetInfo("imagenet", tuple(map(str, range(1000))), 3, IMAGENET_SIZE,
                           IMAGENET_MEAN, IMAGENET_STD)
    if args.data_dir:
        test_set = load_dataset(info.name, "test", args.data_dir, info=info)
        step = max(1, len(test_set) // args.images)
        images = torch.stack([test_set[index][0] for index in range(0, len(test_set), step)
                              ][:args.images])
        inputs = info.normalize(images)
    else:
        inputs = torch.randn(args.images, 3, 224, 224)
    with torch.no_grad():
        targets = model(inputs).argmax(1)
        model(inputs[:1]).sum()  # one-off costs (kernel choice) out of the first row
    layer = conv_layer_names(model)[-1]
    usable = cam_layer_applies(model, layer, inputs[:1])
    methods = args.methods or [name for name, method in METHODS.items() if method.evaluated
                               and ("gap-linear" not in method.needs or usable)]
    stages = len(evaluated_stages(len(randomization_stages(model)), RANDOMIZATION_POINTS))
    count = len(inputs)
    print(f"{args.arch}, {'trained' if args.weights else 'random'} weights, layer {layer}, "
          f"{count} images timed, {stages} randomization stages with maps, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("| method | map s/img | deletion+insertion s/img | ROAD s/img | average drop s/img | "
          f"randomization s/sanity img ({stages} maps) |")
    print("|---|---|---|---|---|---|")
    totals = {"maps": 0.0, "deletion_insertion": 0.0, "road": 0.0, "average_drop": 0.0,
              "randomization": 0.0}
    for method in methods:
        # the evaluation's own call: the registry's defaults (model.evaluation.scoring)
        map_s, maps = seconds(lambda: attribution_maps(method, model, inputs, targets,
                                                       Settings(info, layer)))
        curve_s, _ = seconds(lambda: [deletion_insertion_curves(
            model, inputs, targets, maps, mode, 16, batch_size=512,
            generator=torch.Generator().manual_seed(0)) for mode in ("deletion", "insertion")])
        road_s, _ = seconds(lambda: [road_curves(
            model, inputs, targets, maps, order, pixel_std=info.std, batch_size=512,
            generator=torch.Generator().manual_seed(0)) for order in ORDERS])
        drop_s, _ = seconds(lambda: explanation_map_probabilities(model, inputs, targets, maps,
                                                                  info, batch_size=512))
        row = {"maps": map_s / count, "deletion_insertion": curve_s / count,
               "road": road_s / count, "average_drop": drop_s / count,
               "randomization": stages * map_s / count}
        for key in ("maps", "deletion_insertion", "road", "average_drop"):
            totals[key] += row[key] * args.num_images
        totals["randomization"] += row["randomization"] * args.sanity_images
        print(f"| {method} | " + " | ".join(f"{value:.2f}" for value in row.values()) + " |",
              flush=True)
    print(f"\nan evaluation of {args.num_images} images ({args.sanity_images} in the "
          "randomization check), in minutes: "
          + ", ".join(f"{key} {value / 60:.1f}" for key, value in totals.items())
          + f"; in all {sum(totals.values()) / 60:.1f}")


if __name__ == "__main__":
    main()
