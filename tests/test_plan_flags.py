"""What a plan changes in the scripts: fewer images scanned (reported in split indices), Faster
Score-CAM in Score-CAM's place (named so), fewer randomization stages; the notes a script gives
reach its caller as data; an image folder is named by its own name; the test predictions are
made once per net and split."""
import json

import numpy as np
import pytest
import torch

import class_activation_maps
import evaluate_attributions
import gradient_ascent
import max_activation_search
from model.cli.running import run
from model.data import sampling
from model.data.datasets import dataset_title, load_dataset
from model.nets.architectures import build_model
from model.nets.checkpoint import load_model
from model.nets.layers import layer_activations
from model.runtime.notes import collecting, note


def test_a_scan_of_a_spread_reports_the_split_indices(trained_shapes_checkpoint, tmp_path):
    out = tmp_path / "spread"
    notes = []
    assert max_activation_search.main(
        ["--checkpoint", str(trained_shapes_checkpoint), "--out", str(out), "--layer", "conv1",
         "--k", "3", "--channels", "0", "--num-images", "100"], None, notes) == 0
    report = json.loads((out / "shapes_conv1_top3.json").read_text())
    test_set = load_dataset("shapes", "test")
    stride = len(test_set) // 100
    assert report["images_scanned"] == len(test_set.spread(100)) < len(test_set)
    assert any("an even spread" in text for text in notes)
    # every reported index is a split index of the spread whose activation is the one reported
    model, info, _ = load_model(trained_shapes_checkpoint, torch.device("cpu"))
    channel = report["channels"]["ch 0"]
    assert all(index % stride == 0 for index in channel["indices"])
    images = info.normalize(test_set.images[channel["indices"]])
    with torch.no_grad():
        maps = layer_activations(model, images, ["conv1"])["conv1"][:, 0]
    assert maps.flatten(1).amax(1).tolist() == pytest.approx(channel["values"], rel=1e-4,
                                                                abs=1e-5)


def test_faster_score_cam_stands_in_for_score_cam_and_is_named(trained_shapes_checkpoint,
                                                               tmp_path):
    notes = []
    assert class_activation_maps.main(
        ["--checkpoint", str(trained_shapes_checkpoint), "--out", str(tmp_path / "cam"),
         "--index", "0", "1", "--gallery", "0", "--scorecam-channels", "8", "--save-maps",
         str(tmp_path / "maps.npz")], None, notes) == 0
    assert any("Faster Score-CAM on the 8 channels" in text for text in notes)
    saved = np.load(tmp_path / "maps.npz")
    assert "maps_scorecam" not in saved.files and "maps_faster-scorecam" in saved.files


def test_the_evaluation_takes_the_plan_counts(trained_shapes_checkpoint, tmp_path):
    out = tmp_path / "evaluation"
    notes = []
    assert evaluate_attributions.main(
        ["--checkpoint", str(trained_shapes_checkpoint), "--out", str(out), "--num-images", "3",
         "--sanity-images", "2", "--randomization-stages", "2", "--scorecam-channels", "4",
         "--methods", "gradcam", "scorecam", "random"], None, notes) == 0
    record = json.loads((out / "evaluation.json").read_text())
    assert record["methods"] == ["gradcam", "faster-scorecam", "random"]
    assert len(record["randomization"]["stages"]) == 2  # the top layer, then all layers
    assert record["settings"]["faster_scorecam_channels"] == 4
    assert any("stands in for Score-CAM" in text for text in notes)


def test_filter_images_are_compared_with_a_spread(trained_shapes_checkpoint, tmp_path, capsys):
    notes = []
    assert gradient_ascent.main(
        ["--checkpoint", str(trained_shapes_checkpoint), "--out", str(tmp_path), "--layer",
         "conv1", "--filters", "0-1", "--steps", "4", "--compare-images", "50"], None,
        notes) == 0
    assert any("filters compared with" in text for text in notes)


def test_notes_reach_the_caller_as_data_and_the_terminal_as_lines(capsys):
    def command(args):
        note("left out: the evolution (no snapshots)")
        note("left out: the evolution (no snapshots)")  # said twice, collected once
        return []

    notes, outer = [], []
    args = type("Args", (), {"debug": False, "arch": None})()
    with collecting(outer):
        assert run(command, args, notes=notes) == 0
    assert notes == ["left out: the evolution (no snapshots)"] == outer
    assert capsys.readouterr().err.count("note: left out: the evolution") == 2
    note("nobody collects this")  # outside any command: printed only
    assert notes == ["left out: the evolution (no snapshots)"]


@pytest.mark.parametrize("folder, title", [("photos/imagenette", "imagenette"),
                                           ("photos/imagenette/val", "imagenette")])
def test_an_image_folder_is_named_by_its_own_name(tmp_path, folder, title):
    assert dataset_title("imagefolder", tmp_path / folder) == title
    assert dataset_title("shapes", tmp_path / folder) == "shapes"


def test_predictions_are_made_once_per_weights_and_split(monkeypatch):
    test_set = load_dataset("shapes", "test").subset(64)
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, test_set.info.image_size).eval()
    calls = []
    real = sampling.test_logits
    monkeypatch.setattr(sampling, "test_logits",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    first = sampling.test_predictions(model, test_set, "cpu")
    again = sampling.test_predictions(model, test_set, "cpu")
    assert torch.equal(first, again) and len(calls) == 1
    sampling.test_predictions(model, test_set.subset(32), "cpu")  # another split: a pass
    with torch.no_grad():
        model.fc.bias.add_(1.0)  # other weights: a pass
    sampling.test_predictions(model, test_set, "cpu")
    assert len(calls) == 3
