"""Re-run only what changes: Ablation-CAM from the layers after its layer against the whole-net
re-run, and four targets per image against one for the methods that share their passes.

    python bench/ablation_speed.py                 # vgg at 32 px, resnet18 at 224 px: ~2 min
    python bench/ablation_speed.py --nets vgg --images 16

Random weights (they do not change the speed) and random images; the targets are each image's
most probable classes. First table: Ablation-CAM's weights (Desai & Ramaswamy 2020, Eq. 3) in
ms per image, the ablated copies run through the head after the layer
(``model.nets.graph_split``, tracing included) and through the whole net with a hook replacing
the layer's output (``whole_net=True``), and the largest difference of the two weights
(target at 224 px on ResNet-18 layer4: >= 3x). Second table: occlusion, Score-CAM and
Ablation-CAM maps through the registry with 1 and with 4 targets per image (targets (N, 4),
read from the same passes; target: <= 1.3x the one-target time). Repeating each image per
target, as the explorer did before, costs 4x by construction. Third table, where the
``grad-cam`` package (pytorch-grad-cam) can be imported: Ablation-CAM maps through the registry
against its ``AblationCAM`` on the same images, layer and targets, ms per image, and the
largest difference of the two maps once each is min-max scaled per image (its maps are
rectified, scaled to [0, 1] and resized by OpenCV; the registry's bilinearly): an independent
implementation of Desai & Ramaswamy's Eq. 3. Not a requirement of cnn-viz; in a separate
folder, e.g. ``pip install --target /tmp/gradcam --no-deps grad-cam ttach
opencv-python-headless scipy scikit-learn joblib threadpoolctl cloudpickle narwhals`` and
``PYTHONPATH=/tmp/gradcam``.
"""
import argparse
import contextlib
import dataclasses
import functools
import io
import platform
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.timing import fastest  # noqa: E402
from model.attribution import (
    METHODS,  # noqa: E402
    cam as cams,  # noqa: E402
)
from model.attribution.maps import normalize_maps  # noqa: E402
from model.data.datasets import DATASET_INFO  # noqa: E402
from model.nets.architectures import build_model  # noqa: E402
from model.nets.layers import block_end  # noqa: E402
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402

# name -> (arch, image side, layer, classes, default images, timed runs: the best is shown)
NETS = {"vgg": ("vgg", 32, "conv4", 10, 8, 5),
        "resnet18": ("resnet18", 224, "layer4", 1000, 1, 1)}
SHARING_METHODS = ("occlusion", "scorecam", "ablationcam")
TARGETS = 4


def cpu_name():
    """lscpu's model name (the platform's processor string where lscpu is missing)."""
    try:
        lines = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in lines.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            return value.strip()
    return platform.processor() or "unknown CPU"


def ablation_rows(name, model, layer, inputs, targets, batch_size, device, repeats):
    """Ablation-CAM's weights from the head and from the whole net, for each image's first
    target: one table row."""
    targets = targets[:, 0]
    with torch.no_grad():
        activations, _, logits = cams.activations_and_gradients(model, layer, inputs, None,
                                                                need_gradients=False)
    # Untimed: the first call of a batch shape pays for the kernels' setup.
    cams.ablation_weights(model, layer, inputs[:1], activations[:1], logits[:1], targets[:1],
                          batch_size)
    timed = fastest(repeats, device, {
        whole_net: functools.partial(cams.ablation_weights, model, layer, inputs, activations,
                                     logits, targets, batch_size, whole_net=whole_net)
        for whole_net in (False, True)})
    head, whole = (1000 * timed[key][0] / len(inputs) for key in (False, True))
    difference = float((timed[False][1] - timed[True][1]).abs().max())
    print(f"| {name} | {layer} | {activations.shape[1]} | {head:,.1f} | {whole:,.1f} | "
          f"{whole / head:.1f}x | {difference:.1e} |")


def target_rows(name, model, layer, inputs, targets, batch_size, device, repeats):
    """Each sharing method with 1 and with TARGETS targets per image: one row each."""
    # Occlusion's blurred fill needs a normalization; CIFAR-10's at this size is any other's.
    info = dataclasses.replace(DATASET_INFO["cifar10"], image_size=inputs.shape[-1])
    for method in SHARING_METHODS:
        chosen = {1: targets[:, 0], TARGETS: targets}  # (N,) and (N, T)
        timed = fastest(repeats, device, {
            slots: functools.partial(METHODS[method], model, inputs, slot_targets, layer=layer,
                                     info=info, batch_size=batch_size)
            for slots, slot_targets in chosen.items()})
        for slots, (_, maps) in timed.items():
            assert maps.shape[:-2] == chosen[slots].shape
        one, four = (1000 * timed[slots][0] / len(inputs) for slots in (1, TARGETS))
        print(f"| {name} | {method} | {one:,.1f} | {four:,.1f} | {four / one:.2f}x |")


def grad_cam_rows(name, model, layer, inputs, targets, batch_size, device, repeats):
    """Ablation-CAM maps through the registry against pytorch-grad-cam's, for each image's
    first target: one table row."""
    targets = targets[:, 0]
    from pytorch_grad_cam import AblationCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    theirs = AblationCAM(model=model, target_layers=[model.get_submodule(block_end(model,
                                                                                  layer))])
    classes = [ClassifierOutputTarget(int(c)) for c in targets]

    def their_maps():
        with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar per image
            return torch.from_numpy(theirs(input_tensor=inputs, targets=classes))

    timed = fastest(repeats, device, {
        "ours": functools.partial(METHODS["ablationcam"], model, inputs, targets, layer=layer,
                                  batch_size=batch_size),
        "theirs": their_maps})
    ours, other = (1000 * timed[key][0] / len(inputs) for key in ("ours", "theirs"))
    difference = (normalize_maps(timed["ours"][1].cpu().double())
                  - normalize_maps(timed["theirs"][1].double())).abs().max().item()
    print(f"| {name} | {layer} | {ours:,.1f} | {other:,.1f} | {other / ours:.1f}x | "
          f"{difference:.3f} |")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="+", choices=NETS, default=list(NETS),
                        help="nets to time (default: all)")
    parser.add_argument("--images", type=int, default=None,
                        help="images per net (default: 8 for vgg, 1 for resnet18)")
    parser.add_argument("--batch-size", type=int, default=256,
                        help="ablated or masked copies per pass (default: 256, at most "
                             "model.runtime.batching.variant_batch's pixel budget)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed runs per measurement, the fastest shown (default: 5 for "
                             "vgg, 1 for resnet18)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    keep_freed_memory()  # as every script does (model.cli.run)
    device = resolve_device(args.device)
    print(f"CPU: {cpu_name()}; device: {device}; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    setups = {}
    for name in args.nets:
        arch, size, layer, classes, images, repeats = NETS[name]
        torch.manual_seed(0)
        model = build_model(arch, 3, classes, size).to(device).eval()
        inputs = torch.randn(args.images or images, 3, size, size, device=device)
        with torch.no_grad():
            targets = model(inputs).topk(TARGETS, dim=1).indices  # (N, T): top classes
        setups[name] = (model, layer, inputs, targets, args.repeats or repeats)

    table("Ablation-CAM weights, ms per image (one target)",
          ["net", "layer", "channels", "head after the layer", "whole net", "speed-up",
           "max weight difference"], ablation_rows, setups, args.batch_size, device)
    table(f"Maps through the registry, ms per image: 1 target against {TARGETS}",
          ["net", "method", "1 target", f"{TARGETS} targets", "ratio"], target_rows, setups,
          args.batch_size, device)
    try:
        import pytorch_grad_cam  # noqa: F401
    except ImportError:
        print("\npytorch-grad-cam is not importable: its comparison is left out (see --help)")
        return 0
    table("Ablation-CAM maps, ms per image: the registry against pytorch-grad-cam",
          ["net", "layer", "cnn-viz", "pytorch-grad-cam", "speed-up",
           "max difference, min-max scaled"], grad_cam_rows, setups, args.batch_size, device)
    return 0


def table(title, header, rows, setups, batch_size, device):
    """Print a markdown table: ``header``, then ``rows(...)``'s rows for every net."""
    print(f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, (model, layer, inputs, targets, repeats) in setups.items():
        rows(name, model, layer, inputs, targets, batch_size, device, repeats)


if __name__ == "__main__":
    sys.exit(main())
