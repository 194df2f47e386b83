"""Training and inference speed per architecture, and time to the accuracy targets.

    python bench/train_speed.py                                   # shapes, both archs
    python bench/train_speed.py --dataset mnist --data-dir ../shared/data
    python bench/train_speed.py --dataset cifar10 --archs vgg --data-dir data/cifar10-jpg
    python bench/train_speed.py --no-train                        # throughput only, seconds

For each architecture it prints one table row: training images/s (forward + backward + SGD
step, recipe batch size, the recipe's bfloat16 and memory order) and inference images/s
(no-grad forward, batch 512) on the chosen device, then trains with the dataset's recipe
(``model.training.recipes.RECIPES``, or ``--recipe``) from scratch and reports the final test
accuracy, the wall time, data loading included, at which the test accuracy first reached each
target of
``ACCURACY_TARGETS``, and the process's peak resident memory.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.data.datasets import DATASETS, load_dataset  # noqa: E402
from model.nets.architectures import EXAMPLE_ARCHS, build_model  # noqa: E402
from model.runtime.device import (  # noqa: E402
    autocast,
    fast_layout,
    keep_freed_memory,
    resolve_device,
    seed_everything,
)
from model.training.loop import fit, prepare_model
from model.training.optim import make_optimizer  # noqa: E402
from model.training.recipes import DEFAULT_RECIPE, recipe_for

# The accuracies each default recipe is meant to reach (issues "Foundation" and 13).
ACCURACY_TARGETS = {("shapes", "vgg"): (0.97,), ("mnist", "simple"): (0.98,),
                    ("mnist", "vgg"): (0.992,), ("fashion_mnist", "vgg"): (0.91,),
                    ("cifar10", "vgg"): (0.85, 0.88, 0.90, 0.93)}


def throughput(model, images, batch_size, train, steps=20, warmup=3, recipe=None):
    """Images per second of training steps or of no-grad forward passes on one batch, with
    the recipe's bfloat16 autocast and memory order."""
    inputs = images[:batch_size]
    if recipe is not None and recipe.channels_last:
        inputs = fast_layout(inputs)
    bfloat16 = recipe is not None and recipe.bfloat16
    labels = torch.zeros(len(inputs), dtype=torch.long, device=inputs.device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    model.train(train)
    for step in range(warmup + steps):
        if step == warmup:
            if inputs.is_cuda:
                torch.cuda.synchronize()
            started = time.perf_counter()
        if train:
            with autocast(inputs.device, bfloat16):
                loss = F.cross_entropy(model(inputs).float(), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            with torch.no_grad(), autocast(inputs.device, bfloat16):
                model(inputs)
    if inputs.is_cuda:
        torch.cuda.synchronize()
    return steps * len(inputs) / (time.perf_counter() - started)


def bench_arch(dataset, arch, data_dir, device, train_to_target, seed, recipe_name):
    """One table row for ``arch`` on ``dataset`` with the recipe ``recipe_name``."""
    recipe = recipe_for(dataset, arch, recipe_name)
    load_started = time.perf_counter()
    train_set = load_dataset(dataset, "train", data_dir)
    test_set = load_dataset(dataset, "test", data_dir)
    load_s = time.perf_counter() - load_started
    info = train_set.info

    def fresh_model():
        seed_everything(seed)
        model = build_model(arch, info.channels, len(info.classes), info.image_size,
                            recipe.vgg_plan).to(device)
        prepare_model(model, recipe, train_set, device)
        return model

    images = info.normalize(train_set.images[:512].to(device))
    targets = ACCURACY_TARGETS.get((dataset, arch), ())
    row = {"arch": arch, "dataset": dataset, "load_s": load_s,
           "train_img_s": throughput(fresh_model(), images, recipe.batch_size, True,
                                     recipe=recipe),
           "infer_img_s": throughput(fresh_model(), images, 512, False, recipe=recipe),
           "times_to_targets": dict.fromkeys(targets)}
    if not train_to_target:
        return row
    model = fresh_model()
    optimizer = make_optimizer(model, recipe.lr, recipe.weight_decay, recipe)
    # Like a train_cnn.py run: the clock includes loading (or generating) the data.
    started = time.perf_counter() - load_s
    for metrics in fit(model, optimizer, train_set, test_set, first_epoch=1,
                       epochs=recipe.epochs, seed=seed, batch_size=recipe.batch_size,
                       peak_lr=recipe.lr, device=device, augment=recipe.augment,
                       progress=False, recipe=recipe):
        # The image-alone accuracy every epoch; the last epoch's test-time views count too.
        accuracy = max(metrics["test_accuracy"], metrics.get("tta_accuracy", 0.0))
        for target, reached in row["times_to_targets"].items():
            if reached is None and accuracy >= target:
                row["times_to_targets"][target] = time.perf_counter() - started
        print(f"  epoch {metrics['epoch']}: {metrics['test_accuracy']:.2%} at "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    row.update(epochs=recipe.epochs, final_accuracy=metrics["test_accuracy"],
               tta_accuracy=metrics.get("tta_accuracy"), total_s=time.perf_counter() - started)
    return row


def cell(value, form):
    return "-" if value is None else form.format(value)


def accuracy_cell(row):
    """Test accuracy on the image alone, and with the recipe's test-time views if measured."""
    text = cell(row.get("final_accuracy"), "{:.2%}")
    if row.get("tta_accuracy") is not None:
        text += f" ({row['tta_accuracy']:.2%} with test-time views)"
    return text


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=DATASETS, default="shapes",
                        help="dataset to train on (default: shapes)")
    parser.add_argument("--archs", nargs="+", choices=EXAMPLE_ARCHS, default=["simple", "vgg"],
                        help="architectures to measure (default: simple vgg)")
    parser.add_argument("--recipe", default=DEFAULT_RECIPE,
                        help="a named recipe (train_cnn.py --recipe), e.g. long for cifar10 "
                             "(default: the dataset's)")
    parser.add_argument("--data-dir", default="data",
                        help="torchvision's dataset folder (default: data)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--no-train", action="store_true",
                        help="measure throughput only, skip the training runs")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
    print("| arch | dataset | data load | train img/s | inference img/s | epochs | test accuracy "
          "| time to target | total time | peak memory |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for arch in args.archs:
        row = bench_arch(args.dataset, arch, args.data_dir, device, not args.no_train, args.seed,
                         args.recipe)
        reached = ", ".join(f"{target:.0%}: {cell(seconds, '{:.0f} s')}"
                            for target, seconds in row["times_to_targets"].items()) or "-"
        peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"| {arch} | {args.dataset} | {row['load_s']:.1f} s | {row['train_img_s']:.0f} "
              f"| {row['infer_img_s']:.0f} | {cell(row.get('epochs'), '{}')} "
              f"| {accuracy_cell(row)} | {reached} "
              f"| {cell(row.get('total_s'), '{:.1f} s')} | {peak_mib:.0f} MiB |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
