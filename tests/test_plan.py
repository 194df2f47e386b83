"""The report's plan (model.pipeline): the budget rule with a fake clock, and the flags a plan
gives the sections.

The rule's promises (model/pipeline/plan.py): counts never fall when the budget grows, no
section is ever dropped, and the estimate is the measured per-unit costs times the counts.
The per-unit costs are measured here with a fake clock that each kind of work advances by a
known amount, so the estimate can be checked to the second.
"""
import itertools
from types import SimpleNamespace

import pytest
import torch

from model.attribution import METHODS
from model.data.datasets import DATASET_INFO, load_dataset
from model.nets.architectures import build_model
from model.nets.layers import conv_layer_names
from model.pipeline import estimate as estimate_module
from model.pipeline.estimate import UnitCosts, Workload, measure_unit_costs, section_seconds
from model.pipeline.plan import SHARES, Count, counts_at, fit_plan
from model.pipeline.planning import (
    default_budget_minutes,
    ordered,
    report_counts,
    section_flags,
)
from model.report.plans import plan_lines
from model.report.sections import SECTION_NAMES

COUNTS = [Count("explorer photos", 1, 4), Count("evaluation photos", 2, 32),
          Count("randomization photos", 1, 16), Count("randomization stages", 2, 10),
          Count("class-model steps", 32, 256), Count("Score-CAM channels", 16, 1280),
          Count("scanned test images", 500, 3925), Count("feature-map test images", 200, 1000)]


def fake_costs(**changes):
    costs = UnitCosts(scan=0.01, activation_scan=0.02, forward=0.007, backward=0.02,
                      maps={name: 0.5 for name in METHODS if name != "scorecam"}, road=1.5,
                      step=0.03, figure=0.8, model_load=1.0,
                      channels={"features.18": 1280, "features.9": 64, "features.0": 32},
                      measuring=12.0)
    for key, value in changes.items():
        setattr(costs, key, value)
    return costs


WORKLOAD = Workload(sections=list(SECTION_NAMES), explorer=True, test_images=3925, classes=10,
                    layers=[f"features.{i}" for i in range(19)],
                    cam_methods=[n for n, m in METHODS.items() if m.family == "cam"],
                    evaluated=[n for n, m in METHODS.items() if m.evaluated])


def estimate_with(costs):
    return lambda counts: ordered(section_seconds(costs, counts, WORKLOAD))


def test_counts_follow_one_rule_from_minimum_to_full():
    count = Count("evaluation photos", 2, 32)
    assert count.at(0.0) == 2 and count.at(1.0) == 32
    assert count.at(0.5) == 8  # the middle of 2..32 on a log scale
    values = [count.at(share) for share in SHARES]
    assert values == sorted(values) and values[0] == 2 and values[-1] == 32
    assert Count("given", 7, 7).at(0.3) == 7


@pytest.mark.parametrize("costs", [fake_costs(), fake_costs(road=6.0, step=0.2),
                                   fake_costs(scan=0.001, figure=0.1)])
def test_counts_never_fall_when_the_budget_grows_and_no_section_is_dropped(costs):
    estimate = estimate_with(costs)
    sections = set(estimate(counts_at(COUNTS, 1.0)))
    previous = None
    for minutes in [0.5, 1, 2, 3, 4, 5, 6, 8, 10, 15, 20, 30, 45, 60, 120, 600]:
        plan = fit_plan(COUNTS, estimate, 60 * minutes)
        assert set(plan.seconds) == sections  # every section, whatever the budget
        assert all(plan.counts[c.name] >= c.minimum for c in COUNTS)
        if plan.total > 60 * minutes:  # only the minimum plan may run over
            assert plan.share == 0.0
        if previous is not None:
            assert all(plan.counts[name] >= previous.counts[name] for name in plan.counts)
        previous = plan
    assert previous.full and previous.counts == counts_at(COUNTS, 1.0)
    assert fit_plan(COUNTS, estimate, None).full  # no budget: the full run


def test_the_plan_takes_the_largest_share_that_fits():
    estimate = estimate_with(fake_costs())
    plan = fit_plan(COUNTS, estimate, 900)
    assert plan.total <= 900
    following = SHARES[SHARES.index(plan.share) + 1]
    assert sum(estimate(counts_at(COUNTS, following)).values()) > 900
    assert plan.reduced and not plan.full


def test_the_estimate_is_the_measured_unit_costs_times_the_counts():
    costs = fake_costs()
    counts = counts_at(COUNTS, 0.5)
    seconds = section_seconds(costs, counts, WORKLOAD)
    assert seconds["accuracy"] == pytest.approx(3925 * costs.scan)
    assert seconds["plan"] == costs.measuring
    # a scan of n images reads an even spread: every (3925 // n)-th image
    scanned = len(range(0, 3925, 3925 // counts["scanned test images"]))
    assert seconds["max_activation"] == pytest.approx(
        costs.model_load + scanned * costs.activation_scan + 54 * costs.backward
        + 31 * costs.figure)  # 276 panels in 7 figures, 9 in the measured one
    steps = counts["class-model steps"]
    assert seconds["gradient_ascent"] == pytest.approx(
        2 * costs.model_load + steps * (10 + 8) * costs.step
        + scanned * costs.activation_scan + 2 * costs.figure)
    # doubling one unit cost raises exactly the sections that use it, by its share
    doubled = section_seconds(fake_costs(step=2 * costs.step), counts, WORKLOAD)
    assert doubled["gradient_ascent"] - seconds["gradient_ascent"] == pytest.approx(
        steps * 18 * costs.step)
    assert {name for name in seconds if doubled[name] != seconds[name]} == {"gradient_ascent"}
    more_road = section_seconds(fake_costs(road=costs.road + 1), counts, WORKLOAD)
    evaluated = [m for m in WORKLOAD.evaluated if m != "scorecam"] + ["faster-scorecam"]
    # at 224 px the evaluation's batched photos cost EVALUATION_BATCHES x the probes
    assert more_road["evaluation"] - seconds["evaluation"] == pytest.approx(
        estimate_module.EVALUATION_BATCHES * counts["evaluation photos"] * len(evaluated))


def test_score_cam_costs_a_masked_pass_per_channel_and_faster_score_cam_stands_in():
    costs = fake_costs()
    few = section_seconds(costs, {**counts_at(COUNTS, 0.0), "Score-CAM channels": 16},
                          WORKLOAD)
    more = section_seconds(costs, {**counts_at(COUNTS, 0.0), "Score-CAM channels": 80},
                           WORKLOAD)
    # the CAM section maps 6 gallery photos with (faster) Score-CAM: 64 channels more each
    assert more["cam"] - few["cam"] == pytest.approx(6 * 64 * costs.forward)
    full = section_seconds(costs, {**counts_at(COUNTS, 0.0), "Score-CAM channels": 1280},
                           WORKLOAD)
    # exact Score-CAM (every channel) runs beside faster-scorecam's own 16-channel row
    assert full["cam"] - few["cam"] == pytest.approx(
        6 * (costs.maps["faster-scorecam"] + (1280 - 16) * costs.forward))


class FakeClock:
    """A clock that only the work under measurement moves."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def test_measured_costs_come_from_the_clock(monkeypatch):
    """Every kind of work is timed with the clock given: each fake piece of work moves it by a
    known amount, and the measured unit costs are those amounts per unit."""
    clock = FakeClock()
    info = DATASET_INFO["shapes"]
    test_set = load_dataset("shapes", "test").subset(64)
    torch.manual_seed(0)
    model = build_model("vgg", 3, len(info.classes), info.image_size).eval()
    per_call = {"scan": 0.5, "activations": 1.5, "forward": 0.2, "backward": 0.6, "road": 0.3,
                "step": 0.4, "figure": 0.25}

    def work(name, result=None):
        def fake(*args, **kwargs):
            clock.advance(per_call[name])
            return result
        return fake

    monkeypatch.setattr(estimate_module, "test_logits", lambda *a, **k: work("scan")() or [])
    monkeypatch.setattr(estimate_module, "search_top_activations", work("activations"))
    monkeypatch.setattr(estimate_module, "_forward", work("forward"))
    monkeypatch.setattr(estimate_module, "_forward_backward", work("backward"))
    monkeypatch.setattr(estimate_module, "road_curves", work("road"))
    monkeypatch.setattr(estimate_module, "deletion_insertion_curves", lambda *a, **k: None)
    monkeypatch.setattr(estimate_module, "gradient_ascent",
                        lambda *a, steps, **k: clock.advance(per_call["step"] * steps))
    monkeypatch.setattr(estimate_module, "_draw_one", work("figure"))
    map_seconds = {name: 0.01 * (number + 1) for number, name in enumerate(METHODS)}  # a call

    class FakeMethod:
        def __init__(self, name):
            self.name, self.method = name, METHODS[name]
            self.needs, self.defaults = self.method.needs, self.method.defaults

        def __call__(self, *args, **kwargs):
            clock.advance(map_seconds[self.name])

    monkeypatch.setattr(estimate_module, "METHODS",
                        {name: FakeMethod(name) for name in METHODS})
    costs = measure_unit_costs(model, info, test_set, "cpu", conv_layer_names(model), 0.7,
                               0.004, clock=clock)
    side = info.image_size
    assert costs.scan == 0.004  # the accuracy pass's, given
    # the top-activation search costs 3 times the logits' scan of the same images here
    assert costs.activation_scan == pytest.approx(0.004 * 1.5 / 0.5)
    batch = estimate_module.images_per_batch(estimate_module.VARIANT_BATCH, side, side)
    assert costs.forward == pytest.approx(0.2 / batch)
    assert costs.backward == pytest.approx(0.6 / batch)
    photos = min(estimate_module.MAP_PHOTOS, batch // 32)  # small images: measured together
    assert costs.road == pytest.approx(2 * 0.3 / max(2, photos))
    assert costs.step == pytest.approx(0.4 / len(info.classes))  # per step and class
    assert costs.figure == 0.25
    assert costs.model_load >= 0.7  # loading the net, and a script's own copy traced
    assert costs.maps["gradcam"] == pytest.approx(map_seconds["gradcam"] / photos)
    # Integrated Gradients is timed with a few steps and scaled to its own: one pass a step
    steps = METHODS["integrated-gradients"].defaults["steps"]
    scale = (steps + 1) / (estimate_module.PROBE_STEPS + 1)
    assert costs.maps["integrated-gradients"] == pytest.approx(
        map_seconds["integrated-gradients"] / photos * scale)
    assert "scorecam" not in costs.maps  # from faster-scorecam and the masked pass
    # the plan's time is the clock's, warm-up calls included
    assert costs.measuring == pytest.approx(clock.now - 100.0)


def test_the_flags_say_what_was_reduced_and_nothing_at_full():
    full = counts_at(COUNTS, 1.0)
    plan = fit_plan(COUNTS, estimate_with(fake_costs()), 900)
    flags = section_flags(plan, full)
    counts = plan.counts
    assert flags["evaluation"][:2] == ["--num-images", str(counts["evaluation photos"])]
    assert ["--scorecam-channels", str(counts["Score-CAM channels"])] == flags["cam"]
    assert ["--steps", str(counts["class-model steps"])] == flags["gradient_ascent"]
    assert flags["filter_comparison"] == ["--compare-images",
                                          str(counts["scanned test images"])]
    everything = section_flags(fit_plan(COUNTS, estimate_with(fake_costs()), None), full)
    assert everything["cam"] == [] and everything["gradient_ascent"] == []
    assert everything["evaluation"] == ["--num-images", "32"]


def test_the_default_budget_is_five_minutes_above_64_px_on_a_cpu_only():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert default_budget_minutes(224, cpu) == 5.0
    assert default_budget_minutes(64, cpu) is None and default_budget_minutes(32, cpu) is None
    assert default_budget_minutes(224, cuda) is None


def test_counts_the_user_gives_are_kept_and_sanity_photos_never_exceed_the_evaluation():
    args = SimpleNamespace(num_images=None, explorer_images=None)
    for share, size in itertools.product(SHARES[::8], (32, 224)):
        counts = counts_at(report_counts(args, size, 3925, 1280), share)
        assert counts["randomization photos"] <= counts["evaluation photos"]
    given = {c.name: c for c in report_counts(SimpleNamespace(num_images=5, explorer_images=2),
                                              224, 3925, 1280)}
    assert (given["evaluation photos"].minimum, given["evaluation photos"].full) == (5, 5)
    assert (given["explorer photos"].minimum, given["explorer photos"].full) == (2, 2)


def test_the_plan_prints_every_section_and_the_measured_time_beside_it():
    plan = fit_plan(COUNTS, estimate_with(fake_costs()), 900)
    record = {"budget_seconds": 900, "counts": plan.counts, "full_counts": counts_at(COUNTS, 1),
              "reduced": list(plan.reduced), "estimate": plan.seconds,
              "full_estimate": 3600.0}
    lines = plan_lines(record)
    assert lines[0].startswith("plan: budget 15 min 00 s, estimated")
    assert all(any(line.startswith(name) for line in lines) for name in plan.seconds)
    assert "--full" in lines[-1] and "1 hour" not in lines[-1]
    measured = plan_lines(record, {name: 1.0 for name in plan.seconds})
    assert "measured" in measured[1]
