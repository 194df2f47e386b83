"""The report's counts, its default budget, and the flags a plan gives each section.

What the plan may reduce (:func:`report_counts`), each between a minimum and the full run's
value: the explorer's photos, the evaluation's photos, the randomization check's photos and
stages, the class models' steps, Score-CAM's channels (below all of them Faster Score-CAM,
the channels of highest variance, stands in for Score-CAM, named ``faster-scorecam``), and
the test images the top-activation search and the filter comparison scan and the
feature-map statistics read (a class-balanced spread of the split). A count the user sets
(``--num-images``, ``--explorer-images``) is kept as given.
"""
from dataclasses import asdict

from model.attribution import METHODS
from model.attribution.cam import cam_layer_applies
from model.data.datasets import small_images
from model.evaluation.faithfulness import RANDOMIZATION_POINTS
from model.evaluation.scoring import available_methods
from model.evaluation.survey import default_image_counts
from model.pipeline.estimate import Workload, measure_unit_costs, section_seconds
from model.pipeline.plan import Count, counts_at, fit_plan
from model.report.sections import SECTION_NAMES
from model.units.ascent import MAX_DEFAULT_CLASSES
from model.units.firing import statistics_images

DEFAULT_BUDGET_MINUTES = 5.0  # above 64 px on a CPU, when no --budget is given
UNPLANNED_SHARE = 0.9  # of the budget the sections are fitted into
# The sections that do the kinds of work only some do (model.pipeline.estimate.KINDS): the
# others are not measured when none of their sections runs.
KIND_USERS = {"scans": {"max_activation", "feature_maps", "gradient_ascent"},
              "metrics": {"evaluation"}, "steps": {"gradient_ascent"}}
CLASS_MODEL_STEPS = 256  # gradient_ascent.py's default --steps
SANITY_IMAGES = 16  # evaluate_attributions.py's default --sanity-images


def default_budget_minutes(image_size, device):
    """The budget when none is given: the full run (None) up to 64 px and on CUDA, where it
    takes minutes; above 64 px on a CPU a :data:`DEFAULT_BUDGET_MINUTES` plan."""
    if small_images(image_size) or device.type == "cuda":
        return None
    return DEFAULT_BUDGET_MINUTES


def report_counts(args, image_size, test_images, scorecam_channels):
    """The :class:`~model.pipeline.plan.Count` s of a report (see the module docstring).

    Args:
        args: the report's arguments (``num_images``, ``explorer_images`` or None).
        test_images: the test split's size; scorecam_channels: the default layer's channels.
    """
    explorer, evaluation = default_image_counts(image_size)

    def given(value, minimum, full):
        return (value, value) if value is not None else (min(minimum, full), full)

    evaluation = given(args.num_images, 2, evaluation)
    sanity = min(SANITY_IMAGES, evaluation[1])
    return [
        Count("explorer photos", *given(args.explorer_images, 1, explorer), "--explorer-images"),
        Count("evaluation photos", *evaluation, "--num-images"),
        # never more than the evaluation's photos, which the check reuses
        Count("randomization photos", min(1, evaluation[0]), sanity),
        Count("randomization stages", 2, RANDOMIZATION_POINTS),
        Count("class-model steps", 32, CLASS_MODEL_STEPS),
        Count("Score-CAM channels", min(16, scorecam_channels), scorecam_channels),
        Count("scanned test images", min(500, test_images), test_images),
        Count("feature-map test images", min(100, test_images),
              min(statistics_images(image_size), test_images)),
    ]


def section_flags(plan, full_counts):
    """The flags each section's scripts get from ``plan``: section -> argv list; a count at
    its full value adds no flag (the script's default), the evaluation's photos always."""
    counts = plan.counts
    reduced = {name for name in counts if counts[name] < full_counts[name]}

    def flag(name, option):
        return [option, str(counts[name])] if name in reduced else []

    channels = flag("Score-CAM channels", "--scorecam-channels")
    return {
        "cam": channels,
        "evaluation": (["--num-images", str(counts["evaluation photos"])]
                       + flag("randomization photos", "--sanity-images")
                       + flag("randomization stages", "--randomization-stages") + channels),
        "gradient_ascent": flag("class-model steps", "--steps"),
        "filter_comparison": flag("scanned test images", "--compare-images"),
        "max_activation": flag("scanned test images", "--num-images"),
        "feature_maps": flag("feature-map test images", "--num-images"),
    }


def plan_report(args, model, info, test_set, device, layers, model_load_seconds,
                accuracy_seconds, sections, clock=None):
    """Measure the work, fit the counts to the budget, and return the plan as a JSON-ready
    record (``accuracy_seconds``: the accuracy pass over the test split, made before the plan,
    which gives the cost of a scanned image): ``budget_seconds`` (None: the full run), ``share``, ``counts`` and ``full_counts``
    (name -> value), ``reduced`` (names below full), ``estimate`` (section -> seconds, in
    running order), ``full_estimate`` (the full run's total), ``flags`` (section -> argv),
    ``explorer_scorecam_channels`` and ``unit_costs`` (what was measured)."""
    budget = plan_budget_seconds(args, info.image_size, device)
    names = {section.name for section in sections}
    kinds = [kind for kind, users in KIND_USERS.items() if names & users]
    costs = measure_unit_costs(model, info, test_set, device, layers, model_load_seconds,
                               accuracy_seconds / len(test_set), kinds=kinds,
                               **({"clock": clock} if clock else {}))
    counts = report_counts(args, info.image_size, len(test_set),
                           next(iter(costs.channels.values())))
    workload = report_workload(args, model, info, test_set, device, layers, sections)
    estimate = lambda chosen: ordered(section_seconds(costs, chosen, workload))  # noqa: E731
    # 10% of the budget is kept for what the plan does not measure (start-up, the page) and
    # for a machine slower than while it measured (4 reports here: 5 min 03 s to 5 min 50 s)
    plan = fit_plan(counts, estimate, None if budget is None else UNPLANNED_SHARE * budget)
    plan.budget = budget
    full = counts_at(counts, 1.0)
    channels = plan.counts["Score-CAM channels"]
    return {"budget_seconds": budget, "share": plan.share, "counts": plan.counts,
            "full_counts": full, "reduced": list(plan.reduced), "estimate": plan.seconds,
            "full_estimate": sum(estimate(full).values()),
            "flags": section_flags(plan, full),
            "explorer_scorecam_channels": (channels if channels < full["Score-CAM channels"]
                                           else None),
            "unit_costs": asdict(costs)}


def plan_budget_seconds(args, image_size, device):
    """The budget in seconds: ``--budget`` minutes, none with ``--full`` or ``--budget
    none``, else :func:`default_budget_minutes`."""
    if args.full or args.budget == "none":
        return None
    minutes = args.budget if args.budget is not None else default_budget_minutes(
        image_size, device)
    return None if minutes is None else 60 * float(minutes)


def ordered(seconds):
    """Section -> seconds in the order the report runs them: the accuracy pass, the plan,
    the sections, the explorer."""
    order = ["accuracy", "plan", *SECTION_NAMES, "explorer"]
    return {name: seconds[name] for name in order if name in seconds}


def report_workload(args, model, info, test_set, device, layers, sections):
    """What the sections run whatever the plan (``model.pipeline.estimate.Workload``)."""
    probe = info.normalize(test_set.images[:1].to(device))
    usable = cam_layer_applies(model, layers[-1], probe)
    cam_methods = [name for name, method in METHODS.items() if method.family == "cam"
                   and ("gap-linear" not in method.needs or usable)]
    return Workload(sections=[section.name for section in sections],
                    explorer=not args.no_explorer, test_images=len(test_set),
                    classes=min(len(info.classes), MAX_DEFAULT_CLASSES), layers=layers,
                    cam_methods=cam_methods,
                    evaluated=available_methods(model, layers[-1], probe),
                    image_size=info.image_size)
