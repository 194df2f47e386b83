"""Scoring attribution methods: every method's maps of the same test images, and the numbers
that say how far to trust each (``evaluate_attributions.py`` is its command line).

Each method explains the predicted class of the images and is scored by:

- deletion and insertion AUC (Petsiuk et al. 2018, RISE sec. 4.1): pixels removed from the
  image (set to the mean colour) or put back into a blurred copy, most important first; area
  under the target probability. Deletion: lower is better; insertion: higher is better.
- ROAD (Rong et al. 2022): the most (MoRF) or least (LeRF) important 10, 20, ..., 90%
  of the pixels removed and filled by noisy linear imputation (``model.evaluation.road``).
  MoRF: lower is better; LeRF: higher is better.
- Average Drop and Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++ sec. 4.1):
  the net sees the image times its map; the mean relative loss of the target's probability
  (%, lower is better) and the share of images where it rises (%, higher is better).
- pointing game (Zhang et al. 2016) and the share of map mass inside the object (Wang et al.
  2020, sec. 5.2), where the dataset has object masks; these explain the true class.
- model randomization (Adebayo et al. 2018, sec. 3.1): weights re-initialized from the top
  layer down; the Spearman rank correlation of each map with the original (lower is better).
- agreement: the rank correlation between every two methods' maps.
- cost: forward and backward passes per image, wall time and peak memory of each method, and
  what the metrics themselves cost (``metric_costs``).
"""
from dataclasses import dataclass, replace

import torch
from tqdm import tqdm

from model.attribution import METHODS
from model.attribution.cam import cam_layer_applies
from model.attribution.maps import normalize_maps
from model.attribution.occlusion import SURVEY_STRIDE, occlusion_geometry
from model.attribution.registry import VARIANT_SEPARATOR, method_variant
from model.data.datasets import small_images
from model.evaluation.cost import Cost, measure_cost
from model.evaluation.faithfulness import (
    RANDOMIZATION_POINTS,
    area_under_curve,
    average_drop,
    cascading_randomization,
    deletion_insertion_curves,
    evaluated_stages,
    explanation_map_probabilities,
    increase_in_confidence,
    randomization_stages,
    spearman,
)
from model.evaluation.ground_truth import mass_inside, pointing_hits
from model.evaluation.road import ORDERS, ROAD_NOISE, ROAD_PERCENTAGES, road_curves
from model.runtime import distributed


@dataclass
class Settings:
    """What the methods are run with beyond model and images; every other option is the
    registry's default (``model.attribution.registry``), the same as in the method scripts."""

    info: object  # DatasetInfo: for occlusion's fill and the IG baseline
    layer: str  # the CAM layer: the last conv layer
    batch_size: int = 256
    # up to 64 px (model.attribution.occlusion.survey_options)
    occlusion_stride: int = SURVEY_STRIDE
    seed: int = 0
    max_channels: int = None  # faster-scorecam's channels (None: the registry's default)

    def options(self, method):
        """The keyword options of one method's call."""
        options = dict(info=self.info, batch_size=self.batch_size, seed=self.seed)
        if method == "occlusion" and small_images(self.info.image_size):  # else: scaled
            options["stride"] = self.occlusion_stride
        if method == "faster-scorecam" and self.max_channels:
            options["max_channels"] = self.max_channels
        return options


def available_methods(model, layer, inputs):
    """Every method the registry scores by default that applies to the model (CAM needs its
    layer to feed global average pooling and one Linear layer)."""
    usable = cam_layer_applies(model, layer, inputs)
    return [name for name, method in METHODS.items()
            if method.evaluated and ("gap-linear" not in method.needs or usable)]


def scorecam_stand_in(methods, channels):
    """``methods`` with Faster Score-CAM (Wang et al. 2020's faster variant: Score-CAM on the
    ``channels`` channels of highest variance) in Score-CAM's place, named
    ``faster-scorecam``; ``methods`` as they are when ``channels`` is None."""
    if channels is None:
        return list(methods)
    return list(dict.fromkeys(
        VARIANT_SEPARATOR.join(["faster-scorecam", *spec.split(VARIANT_SEPARATOR)[1:]])
        if spec.split(VARIANT_SEPARATOR)[0] == "scorecam" else spec for spec in methods))


def with_smoothing(methods, options):
    """``methods`` with the on/off ``options`` (``aug-smooth``, ``eigen-smooth``) switched on
    for each method that has them (the CAM family): ``gradcam`` -> ``gradcam:aug-smooth``."""
    chosen = []
    for spec in methods:
        method, switched_on = method_variant(spec)
        extra = [option for option in options if option.replace("-", "_") in method.defaults
                 and option.replace("-", "_") not in switched_on]
        chosen.append(VARIANT_SEPARATOR.join([spec, *extra]))
    return list(dict.fromkeys(chosen))


def attribution_maps(method, model, inputs, targets, settings):
    """One method's maps for a batch: (N, C, H, W) -> (N, H, W) in [0, 1], finite.
    ``method`` is a name or a variant (``gradcam:aug-smooth``)."""
    function, switched_on = method_variant(method)
    maps = function(model, inputs, targets, layer=settings.layer,
                    **settings.options(function.name), **switched_on)
    return normalize_maps(maps.detach())


@dataclass
class Evaluation:
    """Everything :func:`score_methods` measured, per method (in ``methods`` order).

    Attributes:
        maps: method -> (N, H, W) maps of the evaluated images.
        curves: method -> {"deletion": (N, S + 1), "insertion": (N, S + 1), "road_morf":
            (N, P), "road_lerf": (N, P)} probabilities (ROAD: one column per percentage).
        scores: method -> {metric: value}, the table.
        stages: the layers randomized, top first (cumulative).
        randomization: method -> mean Spearman correlation with the original map per stage.
        cascade: method -> (sanity images, 1 + stages, H, W) maps: the original, then after
            each stage (Adebayo et al. 2018, Fig. 2).
        agreement: (M, M) mean Spearman correlation between methods' maps.
        metric_costs: metric -> :class:`~model.evaluation.cost.Cost` of computing it for
            every method and image (``deletion_insertion``, ``road``, ``average_drop``).
    """

    methods: list
    maps: dict
    curves: dict
    scores: dict
    stages: list
    randomization: dict
    cascade: dict
    agreement: torch.Tensor
    metric_costs: dict
    road_percentages: tuple = ROAD_PERCENTAGES


CURVES = ("deletion", "insertion", "road_morf", "road_lerf")
# What explain_chunks measures per image: the maps, the curves, Y and O of Average Drop, and
# the ground-truth metrics where there are masks.
PER_IMAGE = ("maps", *CURVES, "full_probability", "explained_probability", "pointing",
             "mass_inside")
METRIC_COSTS = ("deletion_insertion", "road", "average_drop")  # what each metric costs


def score_methods(model, inputs, targets, methods, settings, masks=None, steps=16,
                  sanity_images=16, progress=False, labels=None,
                  stage_count=RANDOMIZATION_POINTS):
    """Score attribution methods on a set of images (see the module docstring).

    The images are explained in chunks of ``settings.batch_size``; chunk c runs with seed
    ``settings.seed + c`` (the random baseline, the order of tied pixels), so that a chunk's
    result does not depend on who computes it. Under torchrun each process takes whole
    chunks (``Processes.my_batches``); rank 0 gathers every image's maps, curves and scores
    and computes the rest, exactly as one process would.

    Args:
        model: the network in eval mode.
        inputs: (N, C, H, W) normalized images; targets: (N,) the class each map explains.
        methods: names from ``model.attribution.METHODS``.
        masks: (N, H, W) bool object masks for the pointing game, or None.
        labels: (N,) the true classes, which the pointing game's maps explain (Zhang et al.
            2016 point at the ground-truth category); None: ``targets``.
        steps: deletion and insertion steps over the whole image.
        sanity_images: how many of the images the randomization check uses.
        stage_count: how many cascading-randomization stages get maps, spread from the top layer
            to all layers (``evaluated_stages``; at least 2).

    Returns:
        :class:`Evaluation` (None in processes other than rank 0).
    """
    processes = distributed.current()
    labels = targets if labels is None else labels.to(targets.device)
    measured = {method: explain_chunks(model, inputs, targets, method, settings, masks, steps,
                                       labels)
                for method in tqdm(methods, disable=not (progress and processes.main),
                                   desc="evaluating", unit="method")}
    gathered = distributed.gather(measured)
    if not processes.main:
        return None
    maps, curves, scores = {}, {}, {}
    metric_costs = {metric: Cost() for metric in METRIC_COSTS}
    for method in methods:
        per_image = {key: torch.cat([piece for _, piece in sorted(
            (start, part[method][key][number]) for part in gathered
            for number, start in enumerate(part[method]["starts"]))])
            for key in PER_IMAGE if measured[method][key] is not None}
        maps[method] = per_image["maps"].to(inputs.device)
        curves[method] = {mode: per_image[mode] for mode in CURVES}
        scores[method] = {f"{mode}_auc": float(area_under_curve(curves[method][mode]).mean())
                          for mode in ("deletion", "insertion")}
        for order in ORDERS:  # ROAD: the mean over images and percentages
            scores[method][f"road_{order}"] = float(curves[method][f"road_{order}"].mean())
        full, explained = per_image["full_probability"], per_image["explained_probability"]
        scores[method]["average_drop"] = float(average_drop(full, explained))
        scores[method]["increase_in_confidence"] = float(increase_in_confidence(full, explained))
        if masks is not None:
            scores[method]["pointing"] = float(per_image["pointing"].float().mean())
            scores[method]["mass_inside"] = float(per_image["mass_inside"].mean())
        cost = Cost()
        for part in gathered:
            cost.add(part[method]["cost"])
            for metric in METRIC_COSTS:
                metric_costs[metric].add(part[method]["metric_costs"][metric])
        scores[method].update(cost.per_image(len(inputs)))

    few_inputs, few_targets = inputs[:sanity_images], targets[:sanity_images]
    stages, randomization = [], {method: [] for method in methods}
    cascade = {method: [maps[method][:sanity_images].cpu()] for method in methods}
    cascade_stages = cascading_randomization(model, settings.seed, stage_count)
    shown = evaluated_stages(len(randomization_stages(model)), stage_count)
    for stage, randomized in tqdm(cascade_stages, disable=not progress, desc="randomization",
                                  total=len(shown), unit="stage"):
        stages.append(stage)
        for method in methods:
            changed = attribution_maps(method, randomized, few_inputs, few_targets, settings)
            correlation = spearman(changed, maps[method][:sanity_images]).mean()
            randomization[method].append(float(correlation))
            cascade[method].append(changed.cpu())
    cascade = {method: torch.stack(stages_maps, 1) for method, stages_maps in cascade.items()}
    for method in methods:
        scores[method]["randomized_top_layer"] = randomization[method][0]
        scores[method]["randomized_all_layers"] = randomization[method][-1]

    agreement = torch.tensor([[float(spearman(maps[a], maps[b]).mean()) for b in methods]
                              for a in methods])
    return Evaluation(methods, maps, curves, scores, stages, randomization, cascade,
                      agreement, metric_costs)


def explain_chunks(model, inputs, targets, method, settings, masks, steps, labels):
    """One method on this process's chunks of the images (:func:`score_methods`).

    Returns:
        dict: ``starts`` (the chunks' first image), per chunk ``maps`` (n, H, W),
        ``deletion`` and ``insertion`` (n, steps + 1) and ``road_morf`` and ``road_lerf``
        (n, P) curves, ``full_probability`` and ``explained_probability`` (n,) (Y and O of
        Average Drop), ``pointing`` (n,) hits and ``mass_inside`` (n,) (None without masks),
        all on the CPU; ``cost``, the method's :class:`~model.evaluation.cost.Cost` over the
        chunks, and ``metric_costs``, metric -> the Cost of scoring its maps.
    """
    chunks = distributed.current().my_batches(len(inputs), settings.batch_size)
    result = {key: [] for key in PER_IMAGE}
    result.update({"starts": [start for start, _ in chunks], "cost": Cost(),
                   "metric_costs": {metric: Cost() for metric in METRIC_COSTS}})
    if masks is None:
        result.update(pointing=None, mass_inside=None)
    if chunks:  # a first call pays one-off costs (kernel selection, autograd set-up)
        attribution_maps(method, model, inputs[:2], targets[:2], settings)
    for start, stop in chunks:
        chunk = replace(settings, seed=settings.seed + start // settings.batch_size)
        images, classes = inputs[start:stop], targets[start:stop]
        with measure_cost(model, inputs.device) as cost:
            maps = attribution_maps(method, model, images, classes, chunk)
        result["cost"].add(cost)
        result["maps"].append(maps.cpu())
        metric_costs = result["metric_costs"]
        with measure_cost(model, inputs.device) as cost:
            for mode in ("deletion", "insertion"):
                # The same generator per method: tied pixels are broken the same way for all.
                generator = torch.Generator().manual_seed(chunk.seed)
                result[mode].append(deletion_insertion_curves(
                    model, images, classes, maps, mode, steps, batch_size=2 * chunk.batch_size,
                    generator=generator).cpu())
        metric_costs["deletion_insertion"].add(cost)
        with measure_cost(model, inputs.device) as cost:
            for order in ORDERS:  # the same ties and the same noise for every method
                generator = torch.Generator().manual_seed(chunk.seed)
                result[f"road_{order}"].append(road_curves(
                    model, images, classes, maps, order, pixel_std=settings.info.std,
                    batch_size=2 * chunk.batch_size, generator=generator).cpu())
        metric_costs["road"].add(cost)
        with measure_cost(model, inputs.device) as cost:
            full, explained = explanation_map_probabilities(
                model, images, classes, maps, settings.info, batch_size=2 * chunk.batch_size)
        metric_costs["average_drop"].add(cost)
        result["full_probability"].append(full.cpu())
        result["explained_probability"].append(explained.cpu())
        if masks is not None:
            truth_maps = maps.clone()  # the true class's maps: the same where it was predicted
            wrong = classes != labels[start:stop]
            if wrong.any():
                truth_maps[wrong] = attribution_maps(method, model, images[wrong],
                                                     labels[start:stop][wrong], chunk)
            result["pointing"].append(pointing_hits(truth_maps, masks[start:stop]).cpu())
            result["mass_inside"].append(mass_inside(truth_maps, masks[start:stop]).cpu())
    return result


def mixed_rows(labels, predictions, count=4):
    """``count`` image rows: up to half misclassified, the rest correct (more wrong ones only
    where too few are right)."""
    wrong = (labels != predictions).nonzero()[:, 0].tolist()
    right = (labels == predictions).nonzero()[:, 0].tolist()
    return (wrong[:count // 2] + right + wrong[count // 2:])[:count]


def metric_cost_summary(evaluation):
    """What each metric cost per image and method: metric -> ``Cost.per_image``."""
    count = len(next(iter(evaluation.maps.values()))) * len(evaluation.methods)
    return {metric: cost.per_image(count) for metric, cost in evaluation.metric_costs.items()}


def evaluation_record(evaluation, settings, steps, sanity_images, indices):
    """A JSON-ready record of the evaluation and its settings."""
    return {"methods": evaluation.methods, "scores": evaluation.scores,
            "metric_costs": metric_cost_summary(evaluation),
            "randomization": {"stages": evaluation.stages, **evaluation.randomization},
            "agreement": evaluation.agreement.tolist(),
            "mean_curves": {m: {mode: c.mean(0).tolist() for mode, c in modes.items()}
                            for m, modes in evaluation.curves.items()},
            "settings": {"layer": settings.layer,
                         "occlusion_patch": occlusion_geometry(settings.info.image_size)[0],
                         "occlusion_stride": settings.options("occlusion").get(
                             "stride", occlusion_geometry(settings.info.image_size)[1]),
                         "occlusion_baseline": METHODS["occlusion"].defaults["baseline"],
                         "deletion_insertion_steps": steps, "sanity_images": sanity_images,
                         "road_percentages": list(ROAD_PERCENTAGES),
                         "road_noise": ROAD_NOISE,
                         "faster_scorecam_channels": settings.options("faster-scorecam").get(
                             "max_channels", METHODS["faster-scorecam"].defaults[
                                 "max_channels"]),
                         "target": "predicted class", "seed": settings.seed},
            "test_indices": indices.tolist()}


