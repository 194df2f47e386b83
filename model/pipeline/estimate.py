"""What each kind of the report's work costs on this model and device, measured on one photo
before the report starts (:func:`measure_unit_costs`), and each section's estimate from those
costs and the plan's counts (:func:`section_seconds`).

The kinds of work (:class:`UnitCosts`): a test image decoded and passed forward (as the scans
run them, a batch of the split), a forward pass and a forward and backward pass (in a batch of
copies of one photo, as the perturbation methods batch theirs), every registered method's map
of one photo at the default layer, ROAD's and deletion / insertion's curves of one map, one
class-model step, drawing one figure and loading the net. Score-CAM is Faster Score-CAM's
measured map plus one masked forward pass per channel more. A section's estimate is the sum of
its work in those units: a scan of n test images is n scans; the evaluation of n photos is n
times every method's map and its metrics, plus the randomization check's photos x stages x
maps; and so on. The measured time
of every section is put beside its estimate in the report (``model.pipeline.report``).
"""
import copy
import io
import time
from dataclasses import dataclass, field

import torch

from model.attribution import METHODS
from model.attribution.cam import cam_layer_applies
from model.attribution.occlusion import occlusion_geometry, survey_options
from model.attribution.maps import normalize_maps
from model.attribution.registry import get_method
from model.evaluation.scoring import scorecam_stand_in
from model.evaluation.faithfulness import deletion_insertion_curves, explanation_map_probabilities
from model.evaluation.road import ORDERS, road_curves
from model.evaluation.survey import TARGETS, explorer_layers
from model.figures.heatmaps import plot_overlay_grid
from model.data.datasets import small_images
from model.data.sampling import test_logits
from model.nets.layers import as_feature_maps, conv_layer_names, layer_output
from model.runtime.batching import images_per_batch
from model.units.activation_search import search_top_activations
from model.units.ascent import MAX_DEFAULT_CLASSES, Regularizers, gradient_ascent

PROBE_CHANNELS = 16  # faster-scorecam's channels when its map is measured
SCAN_BATCH = 512  # a scan's batch (model.data.sampling.test_logits), fewer at 224 px
VARIANT_BATCH = 256  # the perturbation methods' batch, fewer at 224 px
MAP_PHOTOS = 8  # small images whose maps are measured together (one photo at 224 px)
PROBE_STEPS = 4  # Integrated Gradients' steps when its map is measured
STEP_PROBES = (2, 6)  # the class-model ascents timed: a step is their difference
DELETION_STEPS = 16  # evaluate_attributions.py's default --steps
CLASS_MAPS = 10  # class_activation_maps.py's one-image figure: up to 10 classes
GALLERY = 6  # the report's gallery (model.report.sections.GALLERY_SIZE)
FILTERS = 8  # the filter images of the gradient-ascent section
FEATURE_MAP_FIGURES = 4  # figures' work per layer of feature_maps.py (labelled maps, filters)
EVALUATION_FIGURES = 12  # 6 figures, two of them tables of every method's maps
# max_activation_search.py's 7 figures hold 276 panels (6 channels of 3 rows x 9, the overview's
# 6 x 19) against the measured figure's 9, and a figure's cost goes with its panels (each
# panel's axes made and drawn): counted as 7 figures, the section was estimated at 1 s for the
# shapes report's 5 s and 13 s for the 224-px report's 23 s.
MAX_ACTIVATION_FIGURES = 31
# The evaluation maps and scores all its photos at once: at 224 px its maps and metrics took
# 1.4-2.1x the one- and two-photo probes per photo (their variants fill batches of 32 photos
# of 224 px, whose activations overflow the caches: model.runtime.batching), measured on the
# trained MobileNetV2 with 4 photos in four reports (2-core "AMD EPYC", metrics 1.59-1.76 s
# per photo and method against 0.86-0.94 s probed; Faster Score-CAM on 67 channels 1.16 s
# against 0.77 s; the whole section 139-153 s where 1.6x gave 94-113 s).
EVALUATION_BATCHES = 2.0


@dataclass
class UnitCosts:
    """Seconds per unit of work (see the module docstring); ``channels``: layer -> channels of
    the explorer's layers, the default layer first."""

    scan: float  # one test image decoded and passed forward (the accuracy pass's, measured)
    activation_scan: float  # one test image through the top-activation search
    forward: float  # one image's forward pass in a batch of variants (a masked copy)
    backward: float  # one image's forward and backward pass in a batch
    maps: dict  # method -> one photo's map at the default layer
    road: float  # one map's ROAD (MoRF and LeRF) and deletion / insertion curves
    step: float  # one class-model step of one image
    figure: float  # drawing and writing one figure of maps
    model_load: float  # what a script repeats: loading the net, tracing it, listing the data
    channels: dict = field(default_factory=dict)
    measuring: float = 0.0  # what measuring all this took


KINDS = ("scans", "metrics", "steps")  # the kinds of work only some sections have


def measure_unit_costs(model, info, test_set, device, layers, model_load_seconds,
                       scan_seconds, clock=time.perf_counter, kinds=KINDS):
    """Measure every kind of work once, on one photo (and a batch where the work is batched).

    Args:
        layers: the net's conv layers in order (``conv_layer_names``); the last is the
            default layer of the CAM methods.
        model_load_seconds: what loading the net took (each script loads it again).
        scan_seconds: the accuracy pass's seconds per test image (decoded and passed forward).
        kinds: of :data:`KINDS`, those the chosen sections do (the others are not measured and
            cost 0: the top-activation scan, the evaluation's metrics, class-model steps).
        clock: the time source (a fake one in tests).
    Returns:
        a :class:`UnitCosts`.
    """
    started = clock()

    def timed(work, units=1, warm_up=False):
        if warm_up:  # a first call pays one-off costs (kernel choice, BatchNorm folding)
            work()
        before = clock()
        work()
        return (clock() - before) / units

    side = info.image_size
    # the top-activation scan per image: the accuracy pass's (which warmed the net up) times
    # the ratio of the two scans' times on the same two batches of test images
    activation_scan = road = step = 0.0
    if "scans" in kinds:
        part = test_set.subset(2 * images_per_batch(SCAN_BATCH, side, side))
        with torch.no_grad():
            logits = timed(lambda: [out for out, _ in test_logits(model, part, device)])
        activations = timed(lambda: search_top_activations(model, part, layers[-1], k=1,
                                                           device=device))
        activation_scan = scan_seconds * min(max(activations / max(logits, 1e-9), 0.5), 10.0)
    # what a script repeats before its work: its own copy of the net and the traced pass
    start = timed(lambda: conv_layer_names(copy.deepcopy(model)))
    # the maps of several small images at once, as the evaluation computes them; one photo
    photos = max(1, min(MAP_PHOTOS, images_per_batch(VARIANT_BATCH, side, side) // 32))
    few = info.normalize(test_set.images[:photos].to(device))
    one = few[:1]
    with torch.no_grad():
        targets = model(few).argmax(1)
    target = targets[:1]
    batch = one.expand(images_per_batch(VARIANT_BATCH, side, side), -1, -1, -1)
    forward = timed(lambda: _forward(model, batch), len(batch), warm_up=True)
    backward = timed(lambda: _forward_backward(model, batch, int(target)), len(batch),
                     warm_up=True)
    layer = layers[-1]
    usable = cam_layer_applies(model, layer, one)
    maps = {}
    for name, method in METHODS.items():
        if name == "scorecam" or ("gap-linear" in method.needs and not usable):
            continue  # Score-CAM: from faster-scorecam and the cost of a masked pass
        options = {"max_channels": PROBE_CHANNELS} if name == "faster-scorecam" else {}
        if name == "occlusion":  # as the evaluation and the explorer run it
            options = survey_options(side)
        scale = 1.0
        if name == "integrated-gradients":  # a pass per step: a few steps, scaled up
            scale = (method.defaults["steps"] + 1) / (PROBE_STEPS + 1)
            options = {"steps": PROBE_STEPS}
        maps[name] = scale * timed(lambda: method(model, few, targets, layer=layer, info=info,
                                                  **options), photos)
    with torch.no_grad():
        channels = {name: as_feature_maps(layer_output(model, name, one), model, name).shape[1]
                    for name in explorer_layers(layers)}
    if "metrics" in kinds:
        road = _metric_seconds(model, info, test_set, device, layer, photos, timed)
    if "steps" in kinds:  # a step's own cost, without the set-up: two ascents' difference
        classes = torch.arange(min(MAX_DEFAULT_CLASSES, len(info.classes)))  # as the section
        rules = Regularizers(jitter=max(1, side // 16), scale=0.1, rotate=10)
        param = "pixel" if small_images(side) else "fft"
        ascent = [timed(lambda: gradient_ascent(model, info, classes, param=param,
                                                steps=steps, regularizers=rules))
                  for steps in STEP_PROBES]
        step = max(0.0, ascent[1] - ascent[0]) / ((STEP_PROBES[1] - STEP_PROBES[0])
                                                   * len(classes))
    images = info.denormalize(one).cpu().expand(2, -1, -1, -1)
    heat = torch.rand(1, side, side)
    figure = timed(lambda: _draw_one(images, heat))
    return UnitCosts(scan_seconds, activation_scan, forward, backward, maps, road, step, figure,
                     model_load_seconds + start, channels, measuring=clock() - started)


def _metric_seconds(model, info, test_set, device, layer, photos, timed):
    """Seconds per photo of one map's ROAD, deletion / insertion and Average Drop curves, on
    two photos at least (ROAD's batches of variants then fill up as the evaluation's do), one
    with a Grad-CAM map (smooth blobs: ROAD's large holes), one with a saliency map (specks):
    the evaluation's maps are half of each kind."""
    pair = info.normalize(test_set.images[:max(2, photos)].to(device))
    with torch.no_grad():
        paired = model(pair).argmax(1)
    heat = torch.cat([normalize_maps(get_method(name)(model, pair[i::2], paired[i::2],
                                                      layer=layer).detach())
                      for i, name in enumerate(("gradcam", "saliency"))])
    pair, paired = torch.cat([pair[0::2], pair[1::2]]), torch.cat([paired[0::2], paired[1::2]])
    return timed(lambda: [road_curves(model, pair, paired, heat, order, pixel_std=info.std,
                                      generator=torch.Generator().manual_seed(0))
                          for order in ORDERS]
                 + [deletion_insertion_curves(model, pair, paired, heat, mode, DELETION_STEPS)
                    for mode in ("deletion", "insertion")]
                 + [explanation_map_probabilities(model, pair, paired, heat, info)], len(pair))


@torch.no_grad()
def _forward(model, batch):
    return model(batch)


def _forward_backward(model, batch, target):
    batch = batch.clone().requires_grad_(True)
    model(batch)[:, target].sum().backward()


def _draw_one(images, heat):
    """Draw and encode one overlay figure (2 images x 3 maps), as the sections write dozens."""
    maps = {name: heat.expand(len(images), -1, -1) for name in ("a", "b", "c")}
    plot_overlay_grid(images, maps, ["a"] * len(images)).savefig(io.BytesIO(), format="png")


def map_seconds(costs, method, stand_in=None, layer=None):
    """One photo's map by ``method`` at ``layer`` (default: the default layer): measured;
    Score-CAM (exact, on every channel) and Faster Score-CAM (on ``stand_in`` channels where it
    stands in for Score-CAM, else its registry default) from faster-scorecam's measured map and
    one masked pass per channel more."""
    if method in ("scorecam", "faster-scorecam"):
        full = costs.channels[layer] if layer else next(iter(costs.channels.values()))
        own = METHODS["faster-scorecam"].defaults["max_channels"]
        used = full if method == "scorecam" else min(stand_in or own, full)
        return costs.maps["faster-scorecam"] + (used - PROBE_CHANNELS) * costs.forward
    return costs.maps.get(method, 0.0)


def section_seconds(costs, counts, context):
    """Each section's estimate, in seconds, from the measured ``costs`` and the plan's
    ``counts`` (count name -> value, ``model.pipeline.planning.report_counts``).

    Args:
        context: :class:`Workload`: what the sections run whatever the plan (test images,
            classes, conv layers, the methods the CAM section and the evaluation use).
    Returns:
        section name -> seconds, for every section in ``context.sections`` and the explorer.
    """
    channels = counts["Score-CAM channels"]
    if channels >= next(iter(costs.channels.values())):
        channels = None  # every channel: exact Score-CAM, no stand-in
    scanned = spread_size(context.test_images, counts["scanned test images"])

    def maps(methods):
        return sum(map_seconds(costs, method, channels) for method in methods)

    per_photo_metrics = costs.road
    evaluated = scorecam_stand_in(context.evaluated, channels)
    batched = EVALUATION_BATCHES if not small_images(context.image_size) else 1.0
    # the occlusion section runs the script's stride; the maps were measured at the survey's
    size = context.image_size
    script_stride = occlusion_geometry(size)[1]
    passes = (survey_options(size).get("stride", script_stride) / script_stride) ** 2
    seconds = {
        "occlusion": 2 * passes * maps(["occlusion"]) + 3 * costs.figure,
        "cam": (GALLERY * maps(scorecam_stand_in(context.cam_methods, channels))
                + CLASS_MAPS * maps(context.cam_methods[:1]) + 2 * costs.figure),
        # a figure per layer: 9 channels, each projection beside its crop
        "deconvnet": (len(context.layers) * (9 * costs.backward + 2 * costs.figure)),
        # the overview: 6 channels x 9 crops and their projections
        "max_activation": (scanned * costs.activation_scan + 6 * 9 * costs.backward
                           + MAX_ACTIVATION_FIGURES * costs.figure),
        # per layer a map figure (every channel, labelled: about 3 figures' work) and a
        # filter figure, and the dead-filter figure; the statistics read every layer
        "feature_maps": (spread_size(context.test_images, counts["feature-map test images"])
                         * costs.activation_scan
                         + (FEATURE_MAP_FIGURES * len(context.layers) + 1) * costs.figure),
        "gradient_ascent": (counts["class-model steps"] * (context.classes + FILTERS)
                            * costs.step + scanned * costs.activation_scan
                            + 2 * costs.figure + costs.model_load),  # two scripts
        "evaluation": (batched * counts["evaluation photos"] * (
                           maps(evaluated) + len(evaluated) * per_photo_metrics)
                       + counts["randomization stages"] * (  # each stage a new net, traced
                           batched * counts["randomization photos"] * maps(evaluated)
                           + costs.model_load)
                       + EVALUATION_FIGURES * costs.figure),
        "explorer": counts["explorer photos"] * explorer_photo_seconds(costs, channels),
    }
    seconds = {name: value + costs.model_load * (name != "explorer")
               for name, value in seconds.items()
               if name in context.sections or name == "explorer" and context.explorer}
    seconds["accuracy"] = context.test_images * costs.scan
    seconds["plan"] = costs.measuring
    return seconds


def spread_size(total, count):
    """How many images ``dataset.spread(count)`` reads of ``total``: every
    (total // count)-th, all when ``count`` is not smaller."""
    return total if count >= total else len(range(0, total, total // count))


def explorer_photo_seconds(costs, channels):
    """One explorer photo (``model.evaluation.survey.explorer_maps``): every registered
    method at its layers, for :data:`TARGETS` targets. Methods that share passes read every
    target from one call; the others get one (image, target) pair each but read one shared
    forward and backward pass, so they cost a backward pass per target; every map is then
    scored once per target (one forward)."""
    layers = list(costs.channels)
    total, entries = 0.0, 0
    for name, method in METHODS.items():
        if name not in costs.maps and name != "scorecam":
            continue
        if name == "scorecam" and channels is not None:
            continue  # Faster Score-CAM stands in
        at = layers if "layer" in method.needs and "gap-linear" not in method.needs else [None]
        for layer in at:
            entries += 1 + ("counterfactual" in method.defaults)
            if not method.shares_passes:
                continue
            total += map_seconds(costs, name, channels, layer)
    return total + TARGETS * (costs.backward * len(layers) + entries * costs.forward)


@dataclass
class Workload:
    """What the sections run whatever the plan: the sections and explorer chosen, the test
    images, the classes drawn, the conv layers, the CAM section's and the evaluation's
    methods (before any stand-in), and the feature-maps section's figures."""

    sections: list
    explorer: bool
    test_images: int
    classes: int
    layers: list
    cam_methods: list
    evaluated: list
    image_size: int = 224
