"""What the report's explorer page costs: seconds to precompute its maps, and its size.

    python bench/explorer_speed.py                                   # shapes vgg (trained)
    python bench/explorer_speed.py --checkpoint outputs/checkpoints/cifar10_vgg.pt \\
        --dataset cifar10 --data-dir data/cifar10-jpg
    python bench/explorer_speed.py --weights FILE --arch resnet18 --dataset imagefolder \\
        --data-dir photos                                             # 224 px, 4 images

Runs the step ``visualize_all.py`` adds for ``explorer.html`` (``visualize_all.build_explorer``:
every registered method, each gallery image's true and top-3 classes, three layers) on the
model a report would use, and prints one table row: images, maps, seconds, the size of
``explorer_data.js`` and of the whole report folder it would sit in. The issue's bound is 30 s
for the ``shapes`` report on a laptop CPU and 10 MB of data at 32 px.
"""
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import visualize_all  # noqa: E402
from model.images import load_split, test_predictions  # noqa: E402
from model.runtime import resolve_device, seed_everything  # noqa: E402


def main(argv=None):
    parser = visualize_all.get_args_parser()
    parser.description = __doc__.split("\n")[0]
    args = parser.parse_args(argv)
    if not args.weights:
        args.dataset, args.arch = args.dataset or "shapes", args.arch or "vgg"
    seed_everything(args.seed)
    device = resolve_device(args.device)
    if not args.weights and not args.checkpoint and not visualize_all.report_checkpoint(
            args).exists():
        sys.exit(f"no {visualize_all.report_checkpoint(args)}: train it first "
                 f"(python train_cnn.py --dataset {args.dataset} --arch {args.arch})")
    model, info, _, _ = visualize_all.report_model(args, device)
    test_set = load_split(info, "test", args)
    predictions = test_predictions(model, test_set, device)
    out = Path(args.out or tempfile.mkdtemp(prefix="explorer_speed_"))
    started = time.perf_counter()
    page, data = visualize_all.build_explorer(args, model, info, test_set, predictions, device,
                                              out, lambda method, layer: None)
    seconds = time.perf_counter() - started
    content = json.loads(data.read_text().removeprefix("window.EXPLORER_DATA = ").rstrip()
                         .rstrip(";"))
    images = len(content["images"])
    maps = len(content["combos"]) * images * len(content["images"][0]["targets"])
    print("| model | input px | images | maps | seconds | explorer_data.js |")
    print("|---|---|---|---|---|---|")
    print(f"| {args.arch} on {info.name} | {info.image_size} | {images} | {maps} | "
          f"{seconds:.1f} | {data.stat().st_size / 2 ** 20:.1f} MiB |")


if __name__ == "__main__":
    main()
