"""feature_maps.py: activations, the dead-filter report and every figure through the CLI."""
import json

import torch

import feature_maps as fm
import train_cnn
from model.data.datasets import DATASET_INFO, ImageDataset
from model.nets.architectures import build_model
from model.nets.layers import layer_activations, split_at


def test_one_pass_activations_equal_the_split_net():
    torch.manual_seed(0)
    model = build_model("vgg", 3, 6, 16).eval()
    inputs = torch.randn(2, 3, 16, 16)
    activations = layer_activations(model, inputs, ["conv1", "pool1", "conv4"])
    for layer in ("conv1", "pool1", "conv4"):
        with torch.no_grad():
            assert torch.equal(activations[layer], split_at(model, layer)[0](inputs))


def test_dead_filter_report_counts_images_where_a_channel_fires():
    torch.manual_seed(0)
    model = build_model("simple", 3, 6, 16).eval()
    with torch.no_grad():
        model.conv1.bias[3] = -1e3  # never fires
        model.conv1.bias[5] = 1e3  # always fires
    images = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    dataset = ImageDataset(DATASET_INFO["shapes"], images, torch.zeros(10, dtype=torch.long))
    report = fm.dead_filter_report(model, dataset, ["conv1", "conv2"], "cpu", batch_size=3)
    assert 3 in report["conv1"]["dead"] and report["conv1"]["active_share"][5] == 1.0
    with torch.no_grad():
        brute = (torch.relu(model.conv1(dataset.info.normalize(images))).flatten(2).amax(2) > 0)
    assert torch.allclose(report["conv1"]["active_share"], brute.float().mean(0))


def test_cli_draws_filters_maps_dead_report_and_evolution(tmp_path):
    checkpoint = tmp_path / "shapes_simple.pt"
    assert train_cnn.main(["--dataset", "shapes", "--arch", "simple", "--epochs", "2",
                           "--max-train-images", "256", "--save-every-epoch", "--no-progress",
                           "--out", str(checkpoint)]) == 0
    out = tmp_path / "figures"
    assert fm.main(["--checkpoint", str(checkpoint), "--index", "4", "--num-images", "50",
                    "--out", str(out)]) == 0
    expected = ["filters_conv1.png", "filters_conv2.png", "maps_test_4_conv1.png",
                "maps_test_4_conv2.png", "dead_filters.png", "evolution_test_4_conv1.png",
                "evolution_test_4_conv2.png"]
    for name in expected:
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    report = json.loads((out / "dead_filters.json").read_text())
    assert len(report["conv1"]["active_share"]) == 8
    assert [epoch for epoch, _ in fm.snapshot_epochs(checkpoint)] == [1, 2]


def test_snapshots_of_an_earlier_run_with_the_same_out_are_skipped(tmp_path, capsys):
    """A new run to the same --out without --save-every-epoch leaves the old run's snapshots
    beside it; the evolution must not show (or fail on) another run's weights."""
    checkpoint = tmp_path / "shapes_simple.pt"
    common = ["--dataset", "shapes", "--arch", "simple", "--max-train-images", "256",
              "--no-progress", "--out", str(checkpoint)]
    assert train_cnn.main(common + ["--epochs", "2", "--save-every-epoch"]) == 0
    assert train_cnn.main(common + ["--epochs", "1", "--seed", "1"]) == 0
    capsys.readouterr()
    assert fm.snapshot_epochs(checkpoint) == []
    assert "2 snapshots" in capsys.readouterr().err
    code = fm.main(["--checkpoint", str(checkpoint), "--index", "4", "--show", "evolution",
                    "--out", str(tmp_path / "figures")])
    assert code == 0 and not list((tmp_path / "figures").glob("evolution_*"))


def test_cli_without_snapshots_notes_how_to_make_them(trained_shapes_checkpoint, tmp_path,
                                                       capsys):
    code = fm.main(["--checkpoint", str(trained_shapes_checkpoint), "--show", "evolution",
                    "--out", str(tmp_path)])
    assert code == 0 and "--save-every-epoch" in capsys.readouterr().err


def test_unknown_layer_exits_2(trained_shapes_checkpoint, tmp_path):
    assert fm.main(["--checkpoint", str(trained_shapes_checkpoint), "--layers", "conv5",
                    "--out", str(tmp_path)]) == 2


def test_grid_mosaic_places_every_cell_below_its_label_gap():
    from model.figures.heatmaps import grid_mosaic

    weights = torch.randn(3, 4, 3, 3)
    for label_gap in (0, 2):
        mosaic = grid_mosaic(weights, label_gap=label_gap)
        step = 4 + label_gap
        assert mosaic.shape == (3 * step + 1, 4 * 4 + 1)
        for row in range(3):
            for column in range(4):
                top, left = 1 + label_gap + step * row, 1 + 4 * column
                assert torch.equal(mosaic[top:top + 3, left:left + 3], weights[row, column])
        assert torch.isnan(mosaic).sum() == mosaic.numel() - weights.numel()  # only the gaps


def test_main_reports_every_file_it_wrote(trained_shapes_checkpoint, tmp_path):
    written = []
    assert fm.main(["--checkpoint", str(trained_shapes_checkpoint), "--out", str(tmp_path),
                    "--index", "0", "--num-images", "16", "--show", "filters", "maps", "dead",
                    "evolution"], written) == 0
    names = ["filters_conv1.png", "filters_conv2.png", "maps_test_0_conv1.png",
             "maps_test_0_conv2.png", "dead_filters.png", "dead_filters.json"]
    assert written == [tmp_path / name for name in names]  # no snapshots: no evolution
    assert set(written) == {*tmp_path.glob("*.png"), *tmp_path.glob("*.json")}
