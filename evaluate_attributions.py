"""Which attribution map can be trusted? Every method scored on the same test images.

    python evaluate_attributions.py --dataset shapes                  # 100 test images
    python evaluate_attributions.py --dataset shapes --methods gradcam occlusion saliency
    python evaluate_attributions.py --dataset shapes --methods gradcam gradcam:aug-smooth \
        gradcam:eigen-smooth
    python evaluate_attributions.py --dataset mnist --arch simple --num-images 200

Each method explains the predicted class of ``--num-images`` seeded test images (a quarter
misclassified where the model errs that often) and is scored by deletion / insertion AUC
(Petsiuk et al. 2018), ROAD (Rong et al. 2022), Average Drop and Increase in Confidence
(Chattopadhay et al. 2018), the pointing game and the map's mass inside the object where the
dataset has object masks (Zhang et al. 2016; Wang et al. 2020), model randomization (Adebayo
et al. 2018), the agreement between methods and each method's cost: the definitions are in
``model.evaluation.scoring`` and docs/evaluation.md. A ``random`` row (a uniformly random map
per image) gives the chance level of every number. The methods and their options are the
registry's (``model.attribution.METHODS``, those marked ``evaluated``); a method's on/off
options make a row of their own, ``name:option`` (``gradcam:aug-smooth``). With
``--scorecam-channels K``, Faster Score-CAM on the K channels of highest variance takes
Score-CAM's row, named ``faster-scorecam`` (the report's plans do that when time is short).
"""
import sys
from pathlib import Path

from model.attribution import METHODS
from model.attribution.cam import cam_layer_applies
from model.attribution.occlusion import SURVEY_STRIDE
from model.attribution.registry import method_variant
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
from model.evaluation.faithfulness import RANDOMIZATION_POINTS
from model.evaluation.scoring import (
    Settings,
    available_methods,
    evaluation_record,
    metric_cost_summary,
    mixed_rows,
    score_methods,
    scorecam_stand_in,
    with_smoothing,
)
from model.figures.evaluation import (
    plot_agreement,
    plot_curves,
    plot_maps,
    plot_randomization,
    plot_randomization_maps,
    plot_road,
)
from model.figures.plotting import write_figure
from model.nets.layers import block_end, conv_layer_names
from model.report.tables import markdown_table, metric_cost_text
from model.runtime.device import seed_everything
from model.runtime.files import save_json
from model.runtime.notes import note


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
    parser.add_argument("--randomization-stages", type=positive_int,
                        default=RANDOMIZATION_POINTS,
                        help="cascading-randomization stages given maps, from the top layer "
                             f"to all layers, at least 2 (default: {RANDOMIZATION_POINTS})")
    parser.add_argument("--scorecam-channels", type=positive_int, default=None,
                        help="score Faster Score-CAM on the K channels of highest variance in "
                             "Score-CAM's place (default: exact Score-CAM, every channel)")
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
    methods = args.methods or available_methods(model, layer, probe)
    if args.scorecam_channels and any(m.split(":")[0] == "scorecam" for m in methods):
        note(f"Faster Score-CAM on the {args.scorecam_channels} channels of highest variance "
             "stands in for Score-CAM (the faster-scorecam row)")
    methods = with_smoothing(scorecam_stand_in(methods, args.scorecam_channels),
                             smoothing_options(args))
    needs_gap = [m for m in methods if "gap-linear" in method_variant(m)[0].needs]
    if needs_gap and not cam_layer_applies(model, layer, probe):
        raise UserError(f"{needs_gap[0]} needs the layer to feed global average pooling and "
                        f"one Linear layer (--arch vgg, its last conv layer); leave "
                        f"{needs_gap[0]} out")
    indices, predictions = sample_test_images(model, test_set, args.num_images, args.seed,
                                              device, batch_size=args.batch_size)
    settings = Settings(info, layer, args.batch_size, args.occlusion_stride, args.seed,
                        args.scorecam_channels)
    masks = None if test_set.masks is None else test_set.masks[indices].to(device)
    return (methods, settings, info.normalize(test_set.images[indices].to(device)),
            predictions.to(device), test_set.labels[indices], masks, indices)


def evaluate_command(args):
    seed_everything(args.seed)
    device, model, info = load_method_model(args)
    methods, settings, inputs, targets, labels, masks, indices = prepare_evaluation(
        args, model, info, device)
    evaluation = score_methods(model, inputs, targets, methods, settings, masks, args.steps,
                               args.sanity_images, progress=True, labels=labels,
                               stage_count=args.randomization_stages)
    if evaluation is None:
        return []  # another process's share: rank 0 writes the whole evaluation
    out = Path(args.out)
    record = evaluation_record(evaluation, settings, args.steps, args.sanity_images, indices)
    # The paper's example is a correct decision: show the first one among the checked images.
    checked = min(args.sanity_images, len(inputs))
    shown = mixed_rows(labels[:checked], targets[:checked].cpu(), count=1)[0]
    titles = [f"test_{i}\ntrue {info.classes[t]}, pred {info.classes[p]}"
              for i, t, p in zip(indices.tolist(), labels.tolist(), targets.tolist())]
    images = info.denormalize(inputs)
    figures = {
        "deletion_insertion": plot_curves(evaluation), "road": plot_road(evaluation),
        "randomization": plot_randomization(evaluation),
        "randomization_maps": plot_randomization_maps(images[shown], evaluation, shown,
                                                      f"test_{int(indices[shown])}"),
        "agreement": plot_agreement(evaluation),
        "maps": plot_maps(images, evaluation, titles, mixed_rows(labels, targets.cpu()))}
    written = [save_json(record, out / "evaluation.json")]
    written += [write_figure(figure, out / f"{name}.png") for name, figure in figures.items()]
    print(f"{len(inputs)} {info.name} test images, target = predicted class")
    print(markdown_table(evaluation.methods, evaluation.scores))
    print("metric cost per image and method: "
          + metric_cost_text(metric_cost_summary(evaluation)))
    return written


def main(argv=None, written=None, notes=None):
    return run(evaluate_command, get_args_parser().parse_args(argv), written=written,
               notes=notes, several_processes=True)


if __name__ == "__main__":
    sys.exit(main())
