"""Which attribution map can be trusted? Every method scored on the same test images.

    python evaluate_attributions.py --dataset shapes                  # 100 test images
    python evaluate_attributions.py --dataset shapes --methods gradcam occlusion saliency
    python evaluate_attributions.py --dataset shapes --methods gradcam gradcam:aug-smooth \
        gradcam:eigen-smooth
    python evaluate_attributions.py --dataset mnist --arch simple --num-images 200

Each method explains the predicted class of ``--num-images`` seeded test images (a quarter
misclassified where the model errs that often) and is scored by:

- deletion and insertion AUC (Petsiuk et al. 2018, RISE sec. 4.1): pixels removed from the
  image (set to the mean colour) or put back into a blurred copy, most important first; area
  under the target probability. Deletion: lower is better; insertion: higher is better.
- ROAD (Rong et al. 2022): the most (MoRF) or least (LeRF) important 10, 20, ..., 90%
  of the pixels removed and filled by noisy linear imputation, so that the hole's shape does
  not give the map away; mean target probability over the percentages. MoRF: lower is
  better; LeRF: higher is better.
- Average Drop and Increase in Confidence (Chattopadhay et al. 2018, Grad-CAM++ sec. 4.1):
  the net sees the image times its map; the mean relative loss of the target's probability
  (%, lower is better) and the share of images where it rises (%, higher is better).
- pointing game (Zhang et al. 2016) and the share of map mass inside the object (Wang et al.
  2020, sec. 5.2), where the dataset has object masks (``shapes``). As in Zhang et al.'s
  protocol, these explain the true class: a misclassified image is explained once more,
  for its label (the other metrics judge the map of the decision the net made).
- model randomization (Adebayo et al. 2018, sec. 3.1): weights re-initialized from the top
  layer down; the Spearman rank correlation of each map with the original. A map that
  explains the model must change, so lower is better; 1.0 means the map ignores the weights.
- agreement: the rank correlation between every two methods' maps.
- cost: forward and backward passes per image, wall time and peak memory of each method;
  what the metrics themselves cost (their forward passes, the same for every method) is
  printed below the table and kept in evaluation.json (``metric_costs``).

A ``random`` row (a uniformly random map per image, independent of the model) gives the chance
level of every number. The methods and their options are the registry's
(``model.attribution.METHODS``, those marked ``evaluated``); each reduces its map to one value
per pixel as its entry's ``display`` says (saliency: max_c |g_c|, Simonyan et al. 2014, sec.
3.1; Integrated Gradients: the sum over colour channels), and every map is min-max normalized.
A method's on/off options make a row of their own, ``name:option`` (``gradcam:aug-smooth``,
``scorecam:eigen-smooth``, ``gradcam:counterfactual``): what a smoothing buys and costs is read
off the same table.
"""
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from tqdm import tqdm

from model.attribution import BASELINE, METHODS
from model.attribution.cam import cam_layer_applies
from model.attribution.maps import normalize_maps
from model.attribution.occlusion import SURVEY_STRIDE, occlusion_geometry
from model.attribution.registry import VARIANT_SEPARATOR, method_variant
from model.cli.arguments import (
    ArgumentParser,
    method_name,
    positive_int,
    smoothing_options,
    smoothing_parser,
)
from model.cli.method_inputs import checkpoint_parser, load_method_model, load_split
from model.cli.running import run
from model.data.sampling import sample_test_images
from model.errors import UserError
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
from model.figures.heatmaps import DIVERGING_CMAP, plot_map_table, plot_overlay_grid
from model.figures.plotting import Figure, matplotlib, write_figure
from model.nets.layers import block_end, conv_layer_names
from model.report.tables import markdown_table, metric_cost_text
from model.runtime import distributed
from model.runtime.device import seed_everything
from model.runtime.files import save_json


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

    def options(self, method):
        """The keyword options of one method's call."""
        options = dict(info=self.info, batch_size=self.batch_size, seed=self.seed)
        if method == "occlusion" and self.info.image_size <= 64:  # larger: scaled defaults
            options["stride"] = self.occlusion_stride
        return options


def available_methods(model, layer, inputs):
    """Every method the registry scores by default that applies to the model (CAM needs its
    layer to feed global average pooling and one Linear layer)."""
    usable = cam_layer_applies(model, layer, inputs)
    return [name for name, method in METHODS.items()
            if method.evaluated and ("gap-linear" not in method.needs or usable)]


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


CURVES = ("deletion", "insertion", "road_morf", "road_lerf")
# What explain_chunks measures per image: the maps, the curves, Y and O of Average Drop, and
# the ground-truth metrics where there are masks.
PER_IMAGE = ("maps", *CURVES, "full_probability", "explained_probability", "pointing",
             "mass_inside")
METRIC_COSTS = ("deletion_insertion", "road", "average_drop")  # what each metric costs


def score_methods(model, inputs, targets, methods, settings, masks=None, steps=16,
                  sanity_images=16, progress=False, labels=None):
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
    cascade_stages = cascading_randomization(model, settings.seed, RANDOMIZATION_POINTS)
    shown = evaluated_stages(len(randomization_stages(model)), RANDOMIZATION_POINTS)
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


def line_style(methods, method):
    """A distinct colour and line style per method; the random baseline black and dashed."""
    if method == BASELINE:
        return {"color": "black", "linestyle": "--"}
    index = [m for m in methods if m != BASELINE].index(method)
    # Ten colours; past ten methods the colours repeat with another line style.
    return {"color": matplotlib.colormaps["tab10"](index % 10),
            "linestyle": ("-", "-.", ":")[index // 10 % 3]}


def plot_curves(evaluation):
    """Mean deletion and insertion curves per method, the AUC in the legend (RISE Fig. 4)."""
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2)
    for axis, mode, better in zip(axes, ("deletion", "insertion"), ("lower", "higher")):
        for method in evaluation.methods:
            curve = evaluation.curves[method][mode].mean(0)
            fraction = torch.linspace(0, 1, len(curve))
            axis.plot(fraction, curve, label=f"{method} ({area_under_curve(curve[None])[0]:.3f})",
                      **line_style(evaluation.methods, method))
        action = "deleted" if mode == "deletion" else "inserted"
        axis.set(xlabel=f"fraction of pixels {action}, most important first",
                 ylabel="mean p(target)", ylim=(0, 1.02),
                 title=f"{mode} (AUC in brackets, {better} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


ORDER_NAMES = {"morf": "MoRF", "lerf": "LeRF"}  # as the ROAD paper writes them


def plot_road(evaluation):
    """Mean ROAD curves per method, MoRF and LeRF, the mean in the legend (as Rong et al. 2022
    plot them, with p(target) for accuracy)."""
    figure = Figure(figsize=(11, 4.2))
    axes = figure.subplots(1, 2)
    for axis, order, better in zip(axes, ORDERS, ("lower", "higher")):
        for method in evaluation.methods:
            curve = evaluation.curves[method][f"road_{order}"].mean(0)
            axis.plot(ROAD_PERCENTAGES, curve, marker="o", markersize=3,
                      label=f"{method} ({curve.mean():.3f})",
                      **line_style(evaluation.methods, method))
        first = "most" if order == "morf" else "least"
        axis.set(xlabel=f"% of pixels removed, {first} important first (noisy linear "
                        "imputation)", ylabel="mean p(target)", ylim=(0, 1.02),
                 title=f"ROAD {ORDER_NAMES[order]} (mean in brackets, {better} is better)")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    return figure


def plot_randomization(evaluation):
    """Rank correlation with the original map as layers are randomized (Adebayo Fig. 2)."""
    figure = Figure(figsize=(8, 4.2))
    axis = figure.subplots()
    labels = ["original"] + evaluation.stages
    for method in evaluation.methods:
        axis.plot(range(len(labels)), [1.0] + evaluation.randomization[method],
                  marker="o", label=method, markersize=3,
                  **line_style(evaluation.methods, method))
    # a net's block names (features.6.2, trunk_output.block4) overlap side by side: slanted
    slanted = sum(map(len, labels)) > 60
    axis.set_xticks(range(len(labels)), labels, rotation=40 if slanted else 0,
                    ha="right" if slanted else "center", fontsize=8 if slanted else None)
    axis.set(xlabel="randomized down to layer (cumulative, top first)",
             ylabel="Spearman rank correlation", ylim=(-0.3, 1.05),
             title="model randomization: a faithful map decorrelates")
    axis.axhline(0.0, color="black", linewidth=0.6)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    figure.tight_layout()
    return figure


def plot_randomization_maps(image, evaluation, index, title):
    """Image ``index``'s map by each method as the layers are randomized (Adebayo Fig. 2)."""
    maps = torch.stack([evaluation.cascade[method][index] for method in evaluation.methods])
    return plot_map_table(image, maps, evaluation.methods, ["original"] + evaluation.stages,
                          f"{title}: maps as the weights are randomized, top layer first")


def plot_agreement(evaluation):
    """The methods' mean rank correlation as a heatmap with the value in each cell."""
    count = len(evaluation.methods)
    figure = Figure(figsize=(0.6 * count + 2.5, 0.6 * count + 1.5))
    axis = figure.subplots()
    artist = axis.imshow(evaluation.agreement.numpy(), cmap=DIVERGING_CMAP, vmin=-1, vmax=1)
    axis.set_xticks(range(count), evaluation.methods, rotation=60, ha="right")
    axis.set_yticks(range(count), evaluation.methods)
    for row in range(count):
        for column in range(count):
            value = float(evaluation.agreement[row, column])
            axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                      color="white" if abs(value) > 0.6 else "black")
    figure.colorbar(artist, ax=axis, fraction=0.046, pad=0.04, label="Spearman")
    axis.set_title("agreement between methods (mean rank correlation)")
    figure.tight_layout()
    return figure


def plot_maps(images, evaluation, titles, rows):
    """Every method's map of the evaluated images ``rows`` (indices into the batch)."""
    maps = {method: evaluation.maps[method][rows] for method in evaluation.methods}
    return plot_overlay_grid(images[rows], maps, [titles[row] for row in rows])


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


def summary(evaluation, settings, steps, sanity_images, indices):
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
                         "target": "predicted class", "seed": settings.seed},
            "test_indices": indices.tolist()}


def get_args_parser():
    parser = ArgumentParser(description=__doc__.split("\n")[0],
                            parents=[checkpoint_parser("evaluate_attributions"),
                                     smoothing_parser()])
    parser.add_argument("--methods", nargs="+", type=method_name, default=None,
                        help="methods to score, each a name or name:option:... with on/off "
                             "options (aug-smooth, eigen-smooth, counterfactual) switched on "
                             "(default: every one the registry marks as evaluated that "
                             f"applies); names: {', '.join(METHODS)}")
    parser.add_argument("--num-images", type=positive_int, default=100,
                        help="test images to explain (default: 100)")
    parser.add_argument("--steps", type=positive_int, default=16,
                        help="deletion / insertion steps over the image (default: 16)")
    parser.add_argument("--sanity-images", type=positive_int, default=16,
                        help="images for the randomization check (default: 16)")
    parser.add_argument("--layer", default=None,
                        help="conv layer of the CAM methods (default: the last)")
    parser.add_argument("--occlusion-stride", type=positive_int, default=SURVEY_STRIDE,
                        help="occlusion stride up to 64 px; patch and fill are the script's "
                             f"(default: {SURVEY_STRIDE})")
    parser.add_argument("--batch-size", type=positive_int, default=256,
                        help="images per forward pass (default: 256)")
    return parser


def prepare_evaluation(args, model, info, device):
    """Choose the images and settings of an evaluation run from ``args``."""
    layer = args.layer or conv_layer_names(model)[-1]
    block_end(model, layer)
    test_set = load_split(info, "test", args)
    probe = info.normalize(test_set.images[:2].to(device))
    methods = with_smoothing(args.methods or available_methods(model, layer, probe),
                             smoothing_options(args))
    needs_gap = [m for m in methods if "gap-linear" in method_variant(m)[0].needs]
    if needs_gap and not cam_layer_applies(model, layer, probe):
        raise UserError(f"{needs_gap[0]} needs the layer to feed global average pooling and "
                        f"one Linear layer (--arch vgg, its last conv layer); leave "
                        f"{needs_gap[0]} out")
    indices, predictions = sample_test_images(model, test_set, args.num_images, args.seed,
                                              device, batch_size=args.batch_size)
    settings = Settings(info, layer, args.batch_size, args.occlusion_stride, args.seed)
    masks = None if test_set.masks is None else test_set.masks[indices].to(device)
    return (methods, settings, info.normalize(test_set.images[indices].to(device)),
            predictions.to(device), test_set.labels[indices], masks, indices)


def evaluate_command(args):
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    methods, settings, inputs, targets, labels, masks, indices = prepare_evaluation(
        args, model, info, device)
    evaluation = score_methods(model, inputs, targets, methods, settings, masks, args.steps,
                               args.sanity_images, progress=True, labels=labels)
    if evaluation is None:
        return []  # another process's share: rank 0 writes the whole evaluation
    out = Path(args.out)
    written = [save_json(summary(evaluation, settings, args.steps, args.sanity_images, indices),
                         out / "evaluation.json"),
               write_figure(plot_curves(evaluation), out / "deletion_insertion.png"),
               write_figure(plot_road(evaluation), out / "road.png"),
               write_figure(plot_randomization(evaluation), out / "randomization.png")]
    # The paper's example is a correct decision: show the first one among the checked images.
    shown = mixed_rows(labels[:args.sanity_images], targets[:args.sanity_images].cpu(),
                       count=1)[0]
    image = info.denormalize(inputs[shown:shown + 1])[0]
    written.append(write_figure(plot_randomization_maps(image, evaluation, shown,
                                                        f"test_{int(indices[shown])}"),
                                out / "randomization_maps.png"))
    written.append(write_figure(plot_agreement(evaluation), out / "agreement.png"))
    titles = [f"test_{i}\ntrue {info.classes[t]}, pred {info.classes[p]}"
              for i, t, p in zip(indices.tolist(), labels.tolist(), targets.tolist())]
    rows = mixed_rows(labels, targets.cpu())
    written.append(write_figure(plot_maps(info.denormalize(inputs), evaluation, titles, rows),
                                out / "maps.png"))
    print(f"{len(inputs)} {info.name} test images, target = predicted class")
    print(markdown_table(evaluation.methods, evaluation.scores))
    print("metric cost per image and method: "
          + metric_cost_text(metric_cost_summary(evaluation)))
    return written


def main(argv=None, written=None):
    return run(evaluate_command, get_args_parser().parse_args(argv), written=written,
               several_processes=True)


if __name__ == "__main__":
    sys.exit(main())
