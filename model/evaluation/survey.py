"""The survey behind the report's explorer: every registered method's map of a seeded gallery
of test images, for several targets each (``model.report.explorer`` writes it as a page).

What is computed: for each gallery image, the targets are its true class and the top-3
predicted classes (:data:`TARGETS` distinct classes, filled up from the next predictions);
every method of the registry (``model.attribution.METHODS``) explains all of them in one call
with its defaults (occlusion with the evaluation's stride,
``model.attribution.occlusion.survey_options``), the layer-taking methods at
:func:`explorer_layers`. A call takes targets (N, T): the methods that share passes
(``AttributionMethod.shares_passes``: occlusion, Score-CAM, Ablation-CAM, Integrated Gradients
...) read every target from the same passes; the others get each (image, target) pair, the
same tensors for all, so that the gradient methods (the gradient CAMs at every layer and their
counterfactuals, saliency, Input x Gradient, guided backprop, guided Grad-CAM) read one forward
and backward pass (``model.attribution.shared_passes``) instead of 40. A map is
stored as 8 bits per pixel: an unsigned map min-max normalized as in the evaluation
(``normalize_maps``), a signed one (``AttributionMethod.signed``) scaled so that 0 is the
middle of a diverging colour map (:func:`signed_bytes`). Images and maps larger than
:data:`MAX_SIDE` are averaged down to it. All maps go into one base64 block, about 1 KB per
map at 32 px.

Beside each map: the gradient CAM methods' counterfactual maps (``gradcam:counterfactual``,
Selvaraju et al. 2017, sec. 3), and for every map p(target) on its explanation image, the map
times the image (O of Average Drop and Increase in Confidence, Chattopadhay et al. 2018, sec.
4.1; one forward per map, batched).
"""
from dataclasses import dataclass

import torch

from model.attribution import METHODS
from model.attribution.cam import cam_layer_applies
from model.attribution.maps import normalize_maps, shrink, stored_side
from model.attribution.occlusion import survey_options
from model.attribution.registry import VARIANT_SEPARATOR
from model.attribution.shared_passes import shared_passes
from model.data.datasets import small_images
from model.data.sampling import sample_test_images
from model.evaluation.faithfulness import explained_probabilities
from model.nets.layers import conv_layer_names

TARGETS = 4  # the true class and the top-3 predicted ones


def explorer_layers(conv_layers):
    """The layers a layer-taking method is shown at: the last conv layer (every method's
    default), one in the middle and the first, without repeats."""
    chosen = [conv_layers[-1], conv_layers[len(conv_layers) // 2], conv_layers[0]]
    return list(dict.fromkeys(chosen))


def explorer_targets(labels, probabilities, count=TARGETS):
    """Each image's targets: its true class, then its predicted classes from the most
    probable on, skipping repeats, ``count`` in all (fewer where there are fewer classes).

    Args:
        labels: (N,) true classes; probabilities: (N, K).
    Returns:
        (N, min(count, K)) int64 class indices.
    """
    ranked = probabilities.argsort(dim=1, descending=True)
    rows = []
    for label, order in zip(labels.tolist(), ranked.tolist()):
        rows.append(list(dict.fromkeys([label] + order))[:min(count, probabilities.shape[1])])
    return torch.tensor(rows, dtype=torch.int64)


def signed_bytes(maps):
    """Signed (N, H, W) maps as uint8 with 0 at 128: value / (largest magnitude of its map),
    so that red and blue mean the same share of each map's extreme."""
    scale = maps.flatten(1).abs().amax(1).clamp_min(1e-12)[:, None, None]
    return to_bytes(0.5 + 0.5 * maps / scale)


def to_bytes(maps):
    """Maps in [0, 1] as uint8 0..255 (rounded)."""
    return (maps.clamp(0, 1) * 255).round().to(torch.uint8)


def explorer_maps(model, inputs, targets, conv_layers, info, batch_size=256, progress=None,
                  options=None, scorecam_channels=None):
    """Every registered method's maps of ``inputs`` for each of their targets, and the gradient
    CAM methods' counterfactual maps (``gradcam:counterfactual``).

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N, T) class indices per image.
        conv_layers: the model's conv layers, in order (:func:`explorer_layers` picks three).
        progress: called with each (method, layer) before it is computed, if given.
        options: on/off options for the methods that have them (``{"aug_smooth": True}``:
            the CAM family), the others computed without.
        scorecam_channels: where given, Faster Score-CAM on that many channels (of highest
            variance) stands in for Score-CAM, which is left out (a plan short of time).
    Returns:
        list of (method name or variant, layer or None, (N, T, H, W) uint8 maps, (N, T)
        p(target) on each map's explanation image), in registry order.
    """
    count, slots = targets.shape
    targets = targets.to(inputs.device)
    repeated = inputs.repeat_interleave(slots, 0)  # (N * T, C, H, W), image-major
    flat_targets = targets.reshape(-1)  # (N * T,), the target of each repeated image
    results = []
    # The other methods get each (image, target) pair, the same tensors for all, so that the
    # gradient methods read one forward and backward pass (model.attribution.shared_passes).
    with shared_passes(model, repeated, flat_targets, explorer_layers(conv_layers)):
        for name, method in METHODS.items():
            if name == "scorecam" and scorecam_channels is not None:
                continue  # faster-scorecam below, on scorecam_channels channels
            stand_in = ({"max_channels": scorecam_channels}
                        if name == "faster-scorecam" and scorecam_channels is not None else {})
            layers = [None]
            if "layer" in method.needs:
                layers = [layer for layer in explorer_layers(conv_layers)
                          if "gap-linear" not in method.needs
                          or cam_layer_applies(model, layer, inputs[:1])]
            switched = {key: value for key, value in (options or {}).items()
                        if value and key in method.defaults}
            variants = {name: switched}
            if "counterfactual" in method.defaults:
                variants[f"{name}{VARIANT_SEPARATOR}counterfactual"] = {**switched,
                                                                        "counterfactual": True}
            for layer in layers:
                for shown, switched_on in variants.items():
                    if progress:
                        progress(shown, layer)
                    geometry = survey_options(inputs.shape[-1]) if name == "occlusion" else {}
                    # Sharing methods take all T targets at once: (N, T, H, W) comes back.
                    asked = ((inputs, targets) if method.shares_passes
                             else (repeated, flat_targets))
                    maps = method(model, *asked, layer=layer, info=info,
                                  batch_size=batch_size, **geometry, **stand_in,
                                  **switched_on).detach()
                    maps = maps.reshape(-1, *maps.shape[-2:])  # (N * T, H, W), image-major
                    explained = explained_probabilities(model, repeated, flat_targets, maps,
                                                        info, batch_size)
                    maps = shrink(maps.float().cpu()[:, None],
                                  stored_side(maps.shape[-1]))[:, 0]
                    stored = (signed_bytes(maps) if method.signed
                              else to_bytes(normalize_maps(maps)))
                    results.append((shown, layer, stored.view(count, slots, *maps.shape[1:]),
                                    explained.float().cpu().view(count, slots)))
    return results


@dataclass
class GallerySurvey:
    """Every method's maps of a gallery of test images (:func:`survey_gallery`).

    Attributes:
        images: (N, C, H, W) uint8 inputs as shown; labels: (N,) true classes;
        probabilities: (N, K) the model's softmax; targets: (N, T) class indices per image;
        maps: :func:`explorer_maps`'s list; names: ``test_<index>`` per image.
    """

    images: torch.Tensor
    labels: torch.Tensor
    probabilities: torch.Tensor
    targets: torch.Tensor
    maps: list
    names: list


def default_image_counts(image_size):
    """The report's default numbers of images, (explorer, evaluation): 16 and 100 up to 64 px,
    4 and 32 above, where Score-CAM's and Ablation-CAM's passes per map grow with the channels.
    On 2 CPU cores each 224-px photo costs the ImageNet MobileNetV2's evaluation about 45 s of
    maps and metrics, beside its randomization check (16 photos, about 37 minutes): 32 photos
    take about an hour (docs/report.md)."""
    return (16, 100) if small_images(image_size) else (4, 32)


def survey_gallery(model, info, test_set, predictions, device, *, count=None, seed=0,
                   progress=None, options=None, scorecam_channels=None):
    """Every method's maps of ``count`` seeded test images (right and wrong decisions, as the
    report's gallery; default: :func:`default_image_counts`), for each image's
    :func:`explorer_targets`.

    Args:
        predictions: the model's predictions on ``test_set``
            (``model.data.sampling.test_predictions``).
        progress: called with each (method, layer) before it is computed, if given.
        options: on/off options of the CAM methods (:func:`explorer_maps`).
        scorecam_channels: Faster Score-CAM's channels in Score-CAM's place, or None
            (:func:`explorer_maps`).
    Returns:
        a :class:`GallerySurvey`.
    """
    count = count or default_image_counts(info.image_size)[0]
    indices, _ = sample_test_images(model, test_set, count, seed, device, wrong_share=0.34,
                                    predictions=predictions)
    images = test_set.images[indices]
    inputs = info.normalize(images.to(device))
    with torch.no_grad():
        probabilities = torch.softmax(model(inputs).float(), dim=1).cpu()
    labels = test_set.labels[indices]
    targets = explorer_targets(labels, probabilities)
    maps = explorer_maps(model, inputs, targets, conv_layer_names(model), info,
                         progress=progress, options=options,
                         scorecam_channels=scorecam_channels)
    return GallerySurvey(images, labels, probabilities, targets, maps,
                         [f"test_{index}" for index in indices.tolist()])
