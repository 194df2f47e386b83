"""feature_maps.py: activations, the dead-filter report and every figure through the CLI."""
import json

import pytest
import torch
from conftest import random_batch_norm_net
from matplotlib.backends.backend_agg import FigureCanvasAgg

import feature_maps as fm
import train_cnn
from model.data.datasets import DATASET_INFO, ImageDataset
from model.errors import UserError
from model.nets.architectures import build_model
from model.nets.layers import conv_layer_names, layer_activations, layer_statistics, split_at
from model.units.firing import channels_fired, firing_counts


def forward_hooks(model):
    return [hook for module in model.modules() for hook in module._forward_hooks.values()]


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


def test_one_pass_firing_counts_equal_each_layer_counted_on_its_own():
    """firing_counts reads every layer in the same pass over each batch; each layer's own split
    net (split_at) over all images at once must count the same, whatever the batch size. In
    float64, so that another order of the sums cannot flip the sign of a channel's maximum."""
    model = random_batch_norm_net("vgg", 16)
    with torch.no_grad():
        for norm in (model.bn1, model.bn2, model.bn3, model.bn4):
            norm.bias.uniform_(-1.5, 0.5)  # channels that fire on some images only
        model.bn2.bias[5] = -1e3  # and one that never fires
    model.register_forward_pre_hook(lambda module, args: (args[0].double(),))
    images = torch.randint(0, 256, (7, 3, 16, 16), dtype=torch.uint8)
    dataset = ImageDataset(DATASET_INFO["shapes"], images, torch.zeros(7, dtype=torch.long))
    layers = conv_layer_names(model)
    inputs = dataset.info.normalize(images).double()
    with torch.no_grad():
        expected = {layer: (split_at(model, layer)[0](inputs).amax((2, 3)) > 0).sum(0)
                    for layer in layers}
    counts = torch.cat(list(expected.values()))
    assert expected["conv2"][5] == 0 and ((counts > 0) & (counts < 7)).sum() >= 10
    for batch_size in (1, 3, 7):
        found = firing_counts(model, dataset, layers, "cpu", batch_size)
        assert list(found) == layers
        assert all(torch.equal(found[layer], expected[layer]) for layer in layers), batch_size
    assert forward_hooks(model) == []


def test_layer_statistics_leave_no_hooks_when_a_layer_has_no_maps():
    model = build_model("simple", 3, 6, 16).eval()
    inputs = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        counts = layer_statistics(model, inputs, ["conv1", "conv2"], channels_fired)
        assert torch.equal(counts["conv2"], channels_fired(layer_activations(
            model, inputs, ["conv2"])["conv2"]))
        with pytest.raises(UserError, match="not in the convolutional part"):
            layer_statistics(model, inputs, ["conv1", "fc"], channels_fired)
    assert forward_hooks(model) == []


@pytest.mark.parametrize("channels, side", [(21, 7), (3, 112), (1, 3)])
def test_every_map_label_sits_on_the_page_above_its_own_map(channels, side):
    """The maps' page is laid out by hand (no tight_layout, no tight crop): every label and
    the title must lie on the page, no two labels overlap, and each label ends above the top
    of its map (two lines above maps under 14 px)."""
    torch.manual_seed(0)
    activation = torch.rand(channels, side, side) * 20
    figure = fm.plot_feature_maps(torch.rand(3, 32, 32), activation, "test_1800: features.18 "
                                  "feature maps")
    renderer = FigureCanvasAgg(figure).get_renderer()
    page = figure.bbox
    maps_axis = figure.axes[1]
    labels = maps_axis.texts
    assert len(labels) == channels
    boxes = [label.get_window_extent(renderer) for label in labels]
    for box in boxes + [figure._suptitle.get_window_extent(renderer)]:
        assert page.x0 <= box.x0 and box.x1 <= page.x1 and page.y0 <= box.y0 <= box.y1 <= page.y1
    label_gap = labels[0].get_position()[1]  # mosaic rows above the first row of maps
    for channel, box in enumerate(boxes):
        _, stands_on = labels[channel].get_position()  # the mosaic row the label stands on
        map_top = maps_axis.transData.transform((0, stands_on + 0.5))[1]  # its map's top edge
        # above the map's top edge (y grows upwards on the page, downwards in the mosaic) and
        # below the bottom edge of the row above (or the mosaic's top)
        space_top = maps_axis.transData.transform((0, stands_on - label_gap - 0.5))[1]
        assert map_top - 0.5 <= box.y0 and box.y1 <= space_top + 0.5, channel
        assert not any(box.overlaps(other) for other in boxes[channel + 1:]), channel


def test_dead_report_marks_exactly_the_dead_channels_in_red():
    share = torch.tensor([0.0, 0.5, 1.0, 0.0, 0.25])
    figure = fm.plot_dead_report({"conv1": {"active_share": share, "dead": [0, 3]}}, "t")
    axis = figure.axes[0]
    bars = axis.collections[0]
    red = [tuple(colour) == (0.8392156862745098, 0.15294117647058825, 0.1568627450980392, 1.0)
           for colour in bars.get_facecolors()]
    assert red == [True, False, False, True, False]
    tops = [path.vertices[:, 1].max() for path in bars.get_paths()]
    assert tops == pytest.approx(share.tolist())
    assert list(axis.lines[0].get_xdata()) == [0, 3]  # the red ticks below the axis


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
