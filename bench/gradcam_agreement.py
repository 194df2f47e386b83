"""Grad-CAM at each net's default layer against pytorch-grad-cam's, on photos at 224 px.

    mkdir -p data && tar -xf ../shared/data/imagenette-val.tar -C data    # once
    python bench/gradcam_agreement.py --data-dir data/imagenette          # four nets, 8 photos
    python bench/gradcam_agreement.py --archs resnet50 --images 2 --calibration-images 16

For each net (torchvision's resnet50, densenet121, efficientnet_b0 and convnext_tiny by default)
one table row (a DenseNet two, below): the layer, the module pytorch-grad-cam is given, the
layer's map size, the Pearson r of the two maps per photo (min and mean
over ``--images`` photos of ``val/``, each for the net's predicted class) and the seconds per
photo of each side: one untimed warm-up call on the same batch, then the fastest of
``--repeats`` calls, the two sides taking turns. cnn-viz is
``model.attribution.cam.layer_map("gradcam", ...)`` brought to pytorch-grad-cam's form (below);
pytorch-grad-cam (the PyPI package ``grad-cam``) is ``GradCAM(model, target_layers=[module])``
with ``ClassifierOutputTarget``, on the module whose output the project records for the layer
(``model.nets.layers.block_end``), so that both read the same tensor. Selvaraju et al. 2017,
Eq. 1-2: w_k = mean_ij dy^c/dA_kij, M = ReLU(sum_k w_k A_k).

Random weights (no ImageNet weights but MobileNetV2's can be had here), with BatchNorm
statistics measured on ``--calibration-images`` other photos of the folder. With the random
initial statistics (mean 0, variance 1) no BatchNorm rescales what reaches it, and a deep
layer's map hardly depends on the photo: ResNet-50's layer4 maps of neighbouring photos for one
class correlate with r = 0.53-0.82 (DenseNet-121: 0.49-0.74), against 0.10-0.47 (-0.13-0.66)
with measured statistics (4 photos, seed 0), so two implementations could agree on a nearly
fixed map and the agreement would prove little. ConvNeXt has LayerNorm only, which normalizes
each image by itself: nothing to calibrate (a note says so).

DenseNet: two rows. torchvision's DenseNet.forward applies ``F.relu(features, inplace=True)``
to ``features.norm5``'s output, a function call and no module. cnn-viz's default layer
``features.denseblock4`` is recorded as ``features.norm5``'s output tensor, which the ReLU then
changes in place, so cnn-viz reads the rectified maps and the gradient with respect to them
(the gradient from the pooling, not masked by the ReLU): the definition every other row
compares, where the recorded module's output is already rectified.

- ``densenet121``: cnn-viz on torchvision's DenseNet as it is, against pytorch-grad-cam with
  ``target_layers=[wrapper.relu5]`` on :class:`RectifiedDenseNet`, a wrapper sharing the
  DenseNet's ``features`` and ``classifier`` whose final ReLU is a module (not in place; the
  logits are checked equal to torchvision's). Both sides: Grad-CAM of the rectified maps with
  the gradient with respect to the rectified maps. The same definition: r should be 1 up to
  rounding.
- ``densenet121 (torchvision forward)``: pytorch-grad-cam on ``features.norm5`` of
  torchvision's DenseNet as it is, the comparison a user would run. Its ``register_hook`` on the
  tensor before the in-place ReLU returns the gradient before the ReLU (zero where the maps
  were negative) while, on the CPU, its stored activations are the rectified ones (its
  ``.cpu().detach()`` copies nothing there): a mix of the two definitions, r about 0.98 here.
  On a GPU, by its code (not run here), it copies the maps before the ReLU and reads Grad-CAM
  of the unrectified maps instead. The row stays so that the difference stays visible.

Both rows share one cnn-viz measurement (its map and its seconds). A note names the layer
whenever the recorded tensor's version counter shows an in-place change.

The default layer is ``model.nets.layers.default_layer(model)``, each net built by
``model.nets.zoo.build_torchvision``. On a CPU shared with other work one call can take
several times another; the fastest of ``--repeats`` is shown.
"""
import argparse
import sys
from importlib.metadata import version
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.photos import seeded_photos  # noqa: E402
from bench.timing import fastest  # noqa: E402
from model.attribution.cam import layer_map  # noqa: E402
from model.attribution.maps import normalize_maps, resize_maps  # noqa: E402
from model.errors import UserError  # noqa: E402
from model.nets.layers import block_end, default_layer  # noqa: E402
from model.nets.zoo import build_torchvision  # noqa: E402
from model.runtime.calibration import cpu_model_name  # noqa: E402
from model.runtime.device import keep_freed_memory, resolve_device  # noqa: E402

ARCHS = ("resnet50", "densenet121", "efficientnet_b0", "convnext_tiny")
IMAGE_SIZE = 224
CLASSES = 1000

BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
CALIBRATION_BATCH = 16  # photos per calibration pass: the statistics are averaged over passes


def build_net(arch, seed):
    """torchvision's ``arch`` as the project builds it, random weights drawn from ``seed``, in
    eval mode."""
    torch.manual_seed(seed)
    return build_torchvision(arch, in_channels=3, num_classes=CLASSES,
                             image_size=IMAGE_SIZE).eval()


class RectifiedDenseNet(nn.Module):
    """torchvision's DenseNet with its final ReLU as a module, for pytorch-grad-cam to hook.

    Shares ``densenet``'s ``features`` and ``classifier`` (the same weights and BatchNorm
    statistics, nothing copied) and runs DenseNet.forward's steps, except that the ReLU after
    ``features.norm5`` is ``relu5`` (``nn.ReLU()``, not in place) instead of
    ``F.relu(features, inplace=True)``: same logits, and ``relu5``'s output is the rectified
    maps, whose gradient a hook on that output receives.
    """

    def __init__(self, densenet):
        super().__init__()
        self.features = densenet.features
        self.relu5 = nn.ReLU()
        self.classifier = densenet.classifier

    def forward(self, x):
        out = self.relu5(self.features(x))
        out = torch.flatten(F.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)


def rectified_wrapper(model, end):
    """A :class:`RectifiedDenseNet` of ``model`` when ``model`` is torchvision's DenseNet and
    ``end`` (the module cnn-viz records) is its ``features``' last module, whose output the
    in-place ReLU changes; else None. The caller checks the logits."""
    from torchvision.models import DenseNet

    if not isinstance(model, DenseNet):
        return None
    last = list(model.features.named_children())[-1][0]
    return RectifiedDenseNet(model).eval() if end == f"features.{last}" else None


def calibrate_batch_norm(model, inputs, batch_size=CALIBRATION_BATCH):
    """Replace every BatchNorm's running statistics with those of ``inputs`` (N, C, H, W):
    reset, then the cumulative average (momentum None) over passes of ``batch_size`` photos.

    Only the BatchNorm layers are in training mode during the passes: a net's dropout and
    stochastic depth (EfficientNet's, ConvNeXt's) would otherwise drop branches and change the
    statistics the later layers see. Returns the number of BatchNorm layers (0: nothing done).
    """
    norms = [module for module in model.modules() if isinstance(module, BATCH_NORMS)]
    momenta = [norm.momentum for norm in norms]
    model.eval()
    try:
        for norm in norms:
            norm.reset_running_stats()
            norm.momentum = None
            norm.train()
        if norms:
            with torch.no_grad():
                for part in inputs.split(batch_size):
                    model(part)
    finally:
        for norm, momentum in zip(norms, momenta):
            norm.momentum = momentum
        model.eval()
    return len(norms)


def cnn_viz_maps(model, inputs, targets, layer):
    """The project's Grad-CAM maps in pytorch-grad-cam's form: (N, H, W) on the CPU, and the
    map's size at the layer (h, w).

    pytorch-grad-cam (base_cam.py ``compute_cam_per_layer``, then ``aggregate_multi_layers``;
    utils/image.py ``scale_cam_image``) takes ReLU(sum_k w_k A_k), min-max normalizes each map,
    resizes it with cv2.resize (bilinear with half-pixel centres, as F.interpolate with
    align_corners=False) and min-max normalizes again; the same steps in the same order here.
    The maps are compared at the input's resolution because that is what pytorch-grad-cam
    returns; the r of two maps does not depend on the min-max steps (an increasing affine map
    per image), and bilinear resizing is linear, so r at 224 px differs from r at the layer's
    resolution only by the weight resizing gives each cell.
    """
    maps = layer_map("gradcam", model, inputs, targets, layer)  # (N, h, w), ReLU'd
    full = normalize_maps(resize_maps(normalize_maps(maps), inputs.shape[-1]))  # (N, H, W)
    return full.cpu(), tuple(maps.shape[-2:])


def changed_in_place(model, name, inputs):
    """Whether the output of module ``name`` is changed in place later in the forward pass
    (torchvision's DenseNet: ``F.relu(features, inplace=True)`` after ``features.norm5``),
    seen on the tensor's version counter in one pass of ``inputs``."""
    seen = {}

    def keep(module, args, output):
        seen["output"], seen["version"] = output, output._version

    handle = model.get_submodule(name).register_forward_hook(keep)
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
    return seen["output"]._version != seen["version"]


def pearson(first, second):
    """Pearson's r of each pair of maps (N, H, W): (N,) float64 (NaN for a constant map)."""
    first, second = (maps.flatten(1).double() for maps in (first, second))
    first = first - first.mean(1, keepdim=True)
    second = second - second.mean(1, keepdim=True)
    return (first * second).sum(1) / (first.norm(dim=1) * second.norm(dim=1))


def agreement_rows(arch, calibration_inputs, inputs, seed, device, repeats):
    """Build, calibrate and compare one net: its table rows (one, or two for a DenseNet: module
    docstring), each (label, layer, pytorch-grad-cam's module, map size, r, cnn-viz s/image,
    pytorch-grad-cam s/image), and its notes."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model = build_net(arch, seed).to(device)
    notes = []
    if not calibrate_batch_norm(model, calibration_inputs.to(device)):
        kinds = sorted({type(module).__name__ for module in model.modules()
                        if type(module).__name__.endswith(("Norm", "Norm1d", "Norm2d"))})
        notes.append(f"{arch}: no BatchNorm ({', '.join(kinds) or 'no normalization'}): "
                     f"nothing to calibrate, its random weights as they are")
    layer = default_layer(model)
    end = block_end(model, layer)
    notes.append(f"{arch}: layer {layer}, cnn-viz's default"
                 + (f"; its output is that of {end}" if end != layer else ""))
    inputs = inputs.to(device)
    with torch.no_grad():
        targets = model(inputs).argmax(1)  # (N,): the predicted classes

    classes = [ClassifierOutputTarget(int(target)) for target in targets]

    def their_maps(net, module):
        # Its hooks exist only during its calls: the project's calls run without them.
        with GradCAM(model=net, target_layers=[module]) as cam:
            return torch.from_numpy(cam(input_tensor=inputs, targets=classes))

    # (label, pytorch-grad-cam's net, its target module, the module's name in the table)
    theirs = [(arch, model, model.get_submodule(end), end)]
    wrapper = rectified_wrapper(model, end)
    if wrapper is not None:
        with torch.no_grad():
            wrapped_logits, logits = wrapper(inputs), model(inputs)
        assert logits.dtype == torch.float32 and torch.allclose(wrapped_logits, logits,
                                                                atol=1e-5), \
            "RectifiedDenseNet's logits differ from torchvision's DenseNet's"
        theirs = [(arch, wrapper, wrapper.relu5, "relu5 of RectifiedDenseNet"),
                  (f"{arch} (torchvision forward)", model, model.get_submodule(end), end)]
    calls = {"ours": lambda: cnn_viz_maps(model, inputs, targets, layer)}
    for label, net, module, _ in theirs:
        calls[label] = lambda net=net, module=module: their_maps(net, module)
    timings = fastest(repeats, device, calls, warm_up=True)
    seconds_ours, (ours, map_size) = timings["ours"]
    count = len(inputs)
    rows = [(label, layer, name, map_size, pearson(ours, timings[label][1]),
             seconds_ours / count, timings[label][0] / count)
            for label, _, _, name in theirs]
    if changed_in_place(model, end, inputs[:1]):
        notes.append(f"{arch}: the output of {end} is changed in place later in the forward "
                     f"pass: cnn-viz reads the changed maps and the gradient with respect to "
                     f"them" + ("" if wrapper is not None else
                                ", pytorch-grad-cam the gradient from before the change (module "
                                "docstring); r below 1 measures that"))
    if wrapper is not None:
        notes.append(f"{arch}: pytorch-grad-cam on relu5 of RectifiedDenseNet (torchvision's "
                     f"DenseNet, its modules shared, the final ReLU a module; logits equal "
                     f"within 1e-5): the same definition as cnn-viz's, Grad-CAM of the "
                     f"rectified maps with the gradient with respect to them")
        notes.append(f"{arch} (torchvision forward): pytorch-grad-cam on {end} of torchvision's "
                     f"DenseNet hooks the gradient from before the in-place ReLU (zero where "
                     f"the maps were negative) and, on the CPU, keeps the rectified maps: a mix "
                     f"of definitions (module docstring); r below 1 measures that")
        notes.append(f"{arch}: both rows share one cnn-viz measurement (maps and seconds)")
    return rows, notes


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=list(ARCHS),
                        help=f"torchvision architectures (default: {' '.join(ARCHS)})")
    parser.add_argument("--data-dir", default="data/imagenette",
                        help="class folders with val/<class>/*: 224 px photos "
                             "(default: data/imagenette)")
    parser.add_argument("--images", type=int, default=8,
                        help="photos whose maps are compared and timed (default: 8)")
    parser.add_argument("--calibration-images", type=int, default=64,
                        help="other photos the BatchNorm statistics are measured on "
                             "(default: 64)")
    parser.add_argument("--seed", type=int, default=0,
                        help="random weights and the photos drawn (default: 0)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed calls of each side after its warm-up call, the fastest "
                             "shown (default: 3)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    return parser


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        if min(args.images, args.calibration_images, args.repeats) < 1:
            raise UserError("--images, --calibration-images and --repeats must be at least 1")
        try:
            import pytorch_grad_cam  # noqa: F401
        except ImportError:
            raise UserError("pytorch-grad-cam is not importable: pip install grad-cam") from None
        keep_freed_memory()  # as every script does (model.cli.run)
        device = resolve_device(args.device)
        drawn = seeded_photos(args.data_dir, args.calibration_images + args.images,
                              IMAGE_SIZE, args.seed, "--calibration-images + --images")
        calibration_inputs, inputs = drawn.split([args.calibration_images, args.images])
        print(f"CPU: {cpu_model_name()}; device: {device}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads; grad-cam {version('grad-cam')}")
        print(f"{len(inputs)} photos compared, BatchNorm statistics from "
              f"{len(calibration_inputs)} others, {IMAGE_SIZE} px, seed {args.seed}\n")
        rows, notes = [], []
        for arch in args.archs:
            arch_rows, arch_notes = agreement_rows(arch, calibration_inputs, inputs, args.seed,
                                                   device, args.repeats)
            rows += arch_rows
            notes += arch_notes
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print("| net | layer | pytorch-grad-cam module | map size | r min | r mean | "
          "cnn-viz s/image | pytorch-grad-cam s/image |")
    print("|---|---|---|---|---|---|---|---|")
    for label, layer, module, (height, width), r, ours, theirs in rows:
        print(f"| {label} | {layer} | {module} | {height}x{width} | {r.min():.6f} | "
              f"{r.mean():.6f} | {ours:.3f} | {theirs:.3f} |")
    print()
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
