"""Streaming top-k search against a plain forward pass, and its memory as the scan grows.

    python bench/max_activation_speed.py                 # shapes train split, vgg, every conv
    python bench/max_activation_speed.py --arch simple

For each conv layer it prints the images/s of max_activation_search's scan and of a plain
no-grad forward pass up to that layer over the same batches (issue target: ratio >= 0.85), then
the process's peak memory (max RSS) after scanning 2,000 and after 20,000 images: the top-k
state is channels x k, so the second scan must not raise the peak. Weights do not change the
speed, so the nets are freshly initialized.
"""
import argparse
import functools
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from model.data.batches import iterate_batches
from model.data.datasets import load_dataset  # noqa: E402
from model.nets.architectures import build_model  # noqa: E402
from model.nets.layers import (
    conv_layer_names,
    layer_output,  # noqa: E402
)
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402
from model.training.recipes import RECIPES  # noqa: E402
from model.units.activation_search import search_top_activations  # noqa: E402


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@torch.no_grad()
def plain_forward(body, dataset, batch_size, device):
    for inputs, _ in iterate_batches(dataset, batch_size, device):
        body(inputs)


def timed(function, *args):
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", choices=("simple", "vgg"), default="vgg",
                        help="architecture (default: vgg)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="images per forward pass (default: 256)")
    parser.add_argument("--k", type=int, default=9, help="images kept per channel (default: 9)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    dataset = load_dataset("shapes", "train")
    info = dataset.info
    model = build_model(args.arch, info.channels, len(info.classes), info.image_size,
                        RECIPES[("shapes", args.arch)].vgg_plan).to(device).eval()
    print(f"device: {device}; shapes train split, {len(dataset)} images, batch "
          f"{args.batch_size}, k {args.k}")
    print("| layer | plain forward img/s | search img/s | ratio |")
    print("|---|---|---|---|")
    for layer in conv_layer_names(model):
        body = functools.partial(layer_output, model, layer)  # the model up to the layer
        plain_forward(body, dataset.subset(512), args.batch_size, device)  # warm-up
        plain = timed(plain_forward, body, dataset, args.batch_size, device)
        scan = timed(search_top_activations, model, dataset, layer, args.k, "max",
                     args.batch_size, device)
        print(f"| {layer} | {len(dataset) / plain:.0f} | {len(dataset) / scan:.0f} "
              f"| {plain / scan:.2f} |", flush=True)
    layer = conv_layer_names(model)[0]  # the largest activations
    search_top_activations(model, dataset.subset(2000), layer, args.k, "max", args.batch_size,
                           device)
    small = peak_rss_mib()
    search_top_activations(model, dataset, layer, args.k, "max", args.batch_size, device)
    print(f"peak memory (max RSS) after scanning {layer} on 2,000 images: {small:.0f} MiB; "
          f"after 20,000 images: {peak_rss_mib():.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
