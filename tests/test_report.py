"""visualize_all.py end to end on a tiny shapes model, and evaluate_attributions.py's core."""
import json
import re
import sys
from urllib.error import URLError

import pytest
import torch
import torchvision.datasets

import class_activation_maps
import visualize_all
from model.attribution import METHODS
from model.data.datasets import DATASET_INFO
from model.evaluation import scoring
from model.evaluation.faithfulness import spearman
from model.nets.architectures import build_model
from model.nets.layers import layer_activations
from model.pipeline.planning import report_counts
from model.report.sections import SECTION_NAMES
from model.report.tables import markdown_table

METRICS = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf", "average_drop",
           "increase_in_confidence", "pointing", "mass_inside", "randomized_top_layer",
           "randomized_all_layers", "forward_passes_per_image", "backward_passes_per_image",
           "seconds", "ms_per_image", "peak_memory_mib")


EVALUATED = {name for name, method in METHODS.items() if method.evaluated}


@pytest.fixture(scope="module")
def report(shapes_report):
    """A full report on a vgg trained by visualize_all itself for one epoch on 512 images
    (conftest.py: shared with tests/test_browser.py)."""
    return shapes_report


def test_every_section_is_on_the_page_and_every_image_exists(report):
    page = (report / "index.html").read_text()
    for name in SECTION_NAMES:
        assert f"id='{name}'" in page
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) > 20
    for source in sources:
        assert not source.startswith(("/", "http")), source  # relative links only
        assert (report / source).is_file(), source
    assert "evolution_" in page  # trained with snapshots, so the evolution figures are there
    assert "<table>" in page and "random" in page


def test_summary_holds_every_metric_and_what_reproduces_the_run(report):
    summary = json.loads((report / "summary.json").read_text())
    scores = summary["evaluation"]["scores"]
    assert set(scores) == EVALUATED  # vgg: cam applies
    for method, values in scores.items():
        assert set(METRICS) <= set(values), method
        assert all(isinstance(v, float) and v == v for v in values.values()), method
    assert set(summary["seconds"]) == {"training", "plan", "accuracy", *SECTION_NAMES,
                                       "explorer"}
    assert summary["explorer"] == "explorer.html"
    assert (report / "explorer.html").is_file() and (report / "explorer_data.js").is_file()
    for key in ("git_commit", "versions", "device", "seed", "training_args", "report_args",
                "test_accuracy", "gallery_test_indices"):
        assert key in summary
    assert not any(section["failed"] for section in summary["sections"])
    assert summary["command"].startswith("python visualize_all.py --dataset shapes --checkpoint")


def test_methods_selects_sections(report, tmp_path):
    checkpoint = str(report.parent / "tiny.pt")
    code = visualize_all.main(["--checkpoint", checkpoint, "--methods", "cam", "occlusion",
                               "--no-explorer", "--out", str(tmp_path)])
    assert code == 0
    page = (tmp_path / "index.html").read_text()
    assert "id='cam'" in page and "id='occlusion'" in page and "id='evaluation'" not in page
    assert "explorer.html" not in page and not (tmp_path / "explorer_data.js").exists()
    assert set(json.loads((tmp_path / "summary.json").read_text())["seconds"]) == {
        "plan", "accuracy", "occlusion", "cam"}


def test_the_full_evaluation_scores_32_images_above_64_px_and_a_given_count_stays():
    parse = visualize_all.get_args_parser().parse_args

    def evaluation_photos(argv, size):
        counts = {count.name: count for count in report_counts(parse(argv), size, 500, 64)}
        return counts["evaluation photos"].minimum, counts["evaluation photos"].full

    assert evaluation_photos([], DATASET_INFO["shapes"].image_size)[1] == 100
    assert evaluation_photos([], 224)[1] == 32
    assert evaluation_photos(["--num-images", "7"], 224) == (7, 7)  # no plan changes it


def test_smoothing_reaches_the_cam_section_the_evaluation_and_the_explorer(report, tmp_path):
    """--aug-smooth and --eigen-smooth of the report go to every CAM method: the CAM section's
    command, the evaluation's rows (gradcam:aug-smooth:eigen-smooth; saliency as it is)."""
    checkpoint = str(report.parent / "tiny.pt")
    code = visualize_all.main(["--checkpoint", checkpoint, "--methods", "cam", "evaluation",
                               "--num-images", "1", "--no-explorer", "--aug-smooth",
                               "--eigen-smooth", "--out", str(tmp_path)])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    commands = " ".join(command for section in summary["sections"]
                        for command in section["commands"])
    assert commands.count("--aug-smooth --eigen-smooth") == 2
    scores = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())["scores"]
    assert "gradcam:aug-smooth:eigen-smooth" in scores and "saliency" in scores
    assert "gradcam" not in scores
    assert scoring.with_smoothing(["gradcam", "saliency", "gradcam:aug-smooth"],
                             ["aug-smooth", "eigen-smooth"]) == [
        "gradcam:aug-smooth:eigen-smooth", "saliency"]  # one row each


def test_evaluate_on_a_toy_net_counts_passes_and_flags_model_independent_maps():
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 16).eval()
    inputs = torch.randn(4, 3, 16, 16)
    targets = torch.tensor([0, 1, 2, 3])
    info = DATASET_INFO["shapes"]
    settings = scoring.Settings(info, "conv4", occlusion_stride=4)
    methods = ["occlusion", "cam", "gradcam", "scorecam", "saliency", "integrated-gradients",
               "input-x-gradient", "random"]
    result = scoring.score_methods(model, inputs, targets, methods, settings, steps=4,
                              sanity_images=4)
    scores = result.scores
    assert scores["occlusion"]["forward_passes_per_image"] == 1 + 16  # 4 x 4 patch positions
    assert scores["occlusion"]["backward_passes_per_image"] == 0
    assert scores["gradcam"]["forward_passes_per_image"] == 1
    assert scores["gradcam"]["backward_passes_per_image"] == 1
    # one pass per live conv4 channel, and one for all the dead ones (their masks are zero)
    with torch.no_grad():
        dead = (layer_activations(model, inputs, ["conv4"])["conv4"].flatten(2) == 0).all(2)
    live_and_one_dead = (~dead).sum(1) + dead.any(1)
    assert scores["scorecam"]["forward_passes_per_image"] == 1 + live_and_one_dead.double().mean()
    assert scores["scorecam"]["backward_passes_per_image"] == 0  # no gradient needed
    assert scores["cam"]["backward_passes_per_image"] == 0
    steps = METHODS["integrated-gradients"].defaults["steps"]  # steps + 1 points on the path
    assert scores["integrated-gradients"]["forward_passes_per_image"] == steps + 1
    assert scores["integrated-gradients"]["backward_passes_per_image"] == steps + 1
    assert scores["input-x-gradient"]["forward_passes_per_image"] == 1
    assert scores["input-x-gradient"]["backward_passes_per_image"] == 1
    # CAM is Grad-CAM for a GAP + Linear head (Selvaraju et al. 2017, sec. 3.1).
    cam, gradcam = methods.index("cam"), methods.index("gradcam")
    assert result.agreement[cam, gradcam] > 0.999
    # The random map ignores the model: randomizing the weights cannot change it.
    assert result.randomization["random"] == [1.0] * 5
    assert result.randomization["saliency"][-1] < 0.9
    # The cascade figure shows the very maps the correlations were computed from.
    for method in methods:
        cascade = result.cascade[method]
        assert cascade.shape == (4, 1 + len(result.stages), 16, 16)
        assert torch.equal(cascade[:, 0], result.maps[method][:4])
        correlations = [float(spearman(cascade[:, stage], cascade[:, 0]).mean())
                        for stage in range(1, cascade.shape[1])]
        assert correlations == pytest.approx(result.randomization[method], abs=1e-6)
    assert all(torch.isfinite(m).all() and m.min() >= 0 and m.max() <= 1
               for m in result.maps.values())
    assert "| random |" in markdown_table(result.methods, result.scores)


def test_evaluation_is_reproducible_on_the_cpu():
    info = DATASET_INFO["shapes"]
    settings = scoring.Settings(info, "conv4", occlusion_stride=4, seed=5)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("vgg", 3, 6, 16).eval()
        inputs, targets = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
        runs.append(scoring.score_methods(model, inputs, targets, sorted(EVALUATED), settings,
                                     steps=4, sanity_images=3))
    first, second = runs
    for method in EVALUATED:
        assert torch.equal(first.maps[method], second.maps[method]), method
        assert torch.equal(first.cascade[method], second.cascade[method]), method
        for mode in ("deletion", "insertion"):
            assert torch.equal(first.curves[method][mode], second.curves[method][mode])
    assert torch.equal(first.agreement, second.agreement)


def test_a_failing_section_is_marked_and_the_others_are_still_written(report, tmp_path,
                                                                       monkeypatch, capsys):
    def broken(argv, written=None, notes=None):
        print("error: the cam went wrong", file=sys.stderr)
        return 2

    # The CAM section fails; the other one, occlusion (the cheapest), is still written.
    monkeypatch.setattr(class_activation_maps, "main", broken)
    code = visualize_all.main(["--checkpoint", str(report.parent / "tiny.pt"), "--methods",
                               "cam", "occlusion", "--no-explorer", "--out", str(tmp_path)])
    assert code == 2
    last = [line for line in capsys.readouterr().err.splitlines() if line.strip()][-1]
    assert last.startswith("error: some sections failed")
    page = (tmp_path / "index.html").read_text()
    assert "This part failed: the cam went wrong" in page
    assert list((tmp_path / "occlusion").glob("*.png"))


def test_a_failed_training_is_one_line_after_the_progress_bar(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    code = visualize_all.main(["--dataset", "mnist", "--data-dir", str(tmp_path / "data"),
                               "--checkpoint", str(tmp_path / "m.pt"), "--out",
                               str(tmp_path / "report")])
    assert code == 2
    err = capsys.readouterr().err
    last = [line for line in err.splitlines() if line.strip()][-1]
    assert last.startswith("error: training failed: mnist: the download failed")
    assert "Traceback" not in err and not (tmp_path / "m.pt").exists()


def test_mixed_rows_shows_both_kinds_of_decision():
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    predictions = torch.tensor([1, 2, 3, 3, 4, 5])  # rows 0-2 wrong, 3-5 right
    assert scoring.mixed_rows(labels, predictions) == [0, 1, 3, 4]
    assert scoring.mixed_rows(labels, predictions, count=1) == [3]
    assert scoring.mixed_rows(labels, labels + 1, count=2) == [0, 1]  # none right
