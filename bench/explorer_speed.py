"""What the report's explorer page costs: seconds to precompute its maps, and its size.

    python bench/explorer_speed.py                                   # shapes vgg (trained)
    python bench/explorer_speed.py --checkpoint outputs/checkpoints/cifar10_vgg.pt \\
        --dataset cifar10 --data-dir data/cifar10-jpg
    python bench/explorer_speed.py --weights FILE --arch resnet18 --dataset imagefolder \\
        --data-dir photos                                             # 224 px, 4 images
    python bench/explorer_speed.py ... --explorer-images 16 --per-method  # and per method

Runs the step ``visualize_all.py`` adds for ``explorer.html``
(``model.evaluation.survey.survey_gallery``: every registered method, each image's true and top-3
classes, three layers) on the model a
method script would load, and prints one table row: images, maps, seconds and the size of
``explorer_data.js``. The issue's bound is 30 s for the ``shapes`` report on a laptop CPU and
10 MB of data at 32 px.
"""
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.cli.arguments import ArgumentParser, positive_int  # noqa: E402
from model.cli.method_inputs import (
    checkpoint_parser,
    checkpoint_path,
    load_method_model,
    load_split,
)
from model.data.sampling import test_predictions
from model.evaluation.survey import survey_gallery
from model.report.explorer import explorer_data, read_explorer_data, write_explorer
from model.runtime.device import keep_freed_memory, seed_everything  # noqa: E402


def main(argv=None):
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[checkpoint_parser("explorer_speed")])
    parser.add_argument("--explorer-images", type=positive_int, default=None,
                        help="images (default: 16; 4 above 64 px, as the report)")
    parser.add_argument("--per-method", action="store_true",
                        help="also print the seconds of each method at each layer")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    test_set = load_split(info, "test", args)
    predictions = test_predictions(model, test_set, device)
    steps = []  # (method, layer, when it started)
    started = time.perf_counter()
    survey = survey_gallery(model, info, test_set, predictions, device,
                            count=args.explorer_images, seed=args.seed,
                            progress=lambda method, layer: steps.append(
                                (method, layer, time.perf_counter())))
    ended = time.perf_counter()
    _, data = write_explorer(args.out, explorer_data(info.name, info, survey))
    seconds = time.perf_counter() - started
    content = read_explorer_data(data)
    images = len(content["images"])
    maps = len(content["combos"]) * images * len(content["images"][0]["targets"])
    print("| model | input px | images | maps | seconds | explorer_data.js |")
    print("|---|---|---|---|---|---|")
    name = args.arch or checkpoint_path(args).stem
    print(f"| {name} on {info.name} | {info.image_size} | {images} | "
          f"{maps} | {seconds:.1f} | {data.stat().st_size / 2 ** 20:.1f} MiB |")
    if args.per_method:
        print("\n| method | layer | seconds (its maps and p(target) on each) |\n|---|---|---|")
        for (method, layer, start), end in zip(steps, [when for *_, when in steps[1:]] + [ended]):
            print(f"| {method} | {layer or '-'} | {end - start:.2f} |")


if __name__ == "__main__":
    main()
