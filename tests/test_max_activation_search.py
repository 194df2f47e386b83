"""max_activation_search.py: the streaming top-k against a brute-force full sort."""
import json

import pytest
import torch

import max_activation_search as mas
from conftest import stderr_lines
from model.data.datasets import DATASET_INFO, ImageDataset, load_dataset
from model.errors import UserError
from model.figures.heatmaps import signed_display
from model.nets.architectures import build_model
from model.nets.checkpoint import load_model
from model.nets.layers import split_at
from model.nets.receptive_field import receptive_field
from model.units.activation_search import (
    TopActivations,
    layer_function,
    parse_channels,
    search_top_activations,
)
from model.units.mirror import compute_projections


def dataset_with_duplicates():
    """24 black-and-white images (inputs -2 and 2), many of them exact copies: scores tie."""
    generator = torch.Generator().manual_seed(0)
    distinct = 255 * torch.randint(0, 2, (8, 3, 16, 16), dtype=torch.uint8, generator=generator)
    images = distinct[torch.tensor([0, 1, 2, 0, 3, 1, 4, 5, 0, 6, 2, 7, 3, 3, 1, 0, 4, 5, 6,
                                    7, 2, 0, 1, 3])]
    return ImageDataset(DATASET_INFO["shapes"], images, torch.zeros(24, dtype=torch.int64))


def exact_vgg():
    """A float64 vgg whose activations are exact, so that ties survive any kernel.

    Weights -1, 0 or 1 and BatchNorm the identity: on the +-2 inputs every activation, and every
    partial sum a conv or matmul kernel forms in any order, is a multiple of 1/8 below 2^37, 40
    of float64's 53 bits. So every batch size, kernel and CPU gives the same bits, and equal
    images (and equal integer scores) tie exactly instead of by rounding.
    """
    model = build_model("vgg", 3, 6, 16).eval().double()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if not name.startswith("bn"):
                parameter.copy_(torch.randint(-1, 2, parameter.shape, generator=generator))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.eps = 0.0  # (x - 0) / sqrt(1 + eps) * 1 + 0 is x itself
    return model


def brute_force(model, dataset, layer, k, score):
    with torch.no_grad():
        activations = layer_function(model, layer)(dataset.info.normalize(dataset.images))
    flat = activations.flatten(2)  # (N, K, hw)
    peak, where = flat.max(2)
    scores = (peak if score == "max" else flat.mean(2)).T  # (K, N)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    width = activations.shape[-1]
    positions = torch.stack([where // width, where % width], 2).transpose(0, 1)
    return (scores.gather(1, order), order,
            positions.gather(1, order[:, :, None].expand(-1, -1, 2)), peak.amax(0))


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv3", "fc"])
@pytest.mark.parametrize("score", ["max", "mean"])
@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_streaming_top_k_equals_a_full_sort_ties_included(layer, score, batch_size):
    model = exact_vgg()
    dataset = dataset_with_duplicates()
    result = search_top_activations(model, dataset, layer, k=5, score=score,
                                    batch_size=batch_size)
    values, indices, positions, channel_max = brute_force(model, dataset, layer, 5, score)
    assert torch.equal(result.indices, indices)
    assert torch.equal(result.values, values)
    assert torch.equal(result.positions, positions)
    assert torch.equal(result.channel_max, channel_max)
    assert result.values.shape[1] == 5  # the state is channels x k, whatever the scan size


def test_k_larger_than_the_dataset_pads_with_minus_one():
    model = build_model("simple", 3, 6, 16).eval()
    dataset = dataset_with_duplicates().subset(3)
    result = search_top_activations(model, dataset, "conv1", k=5, batch_size=2)
    assert (result.indices[:, 3:] == -1).all() and torch.isinf(result.values[:, 3:]).all()


def test_dead_channels_are_those_never_positive():
    model = build_model("simple", 3, 6, 16).eval()
    with torch.no_grad():
        model.conv1.bias[2] = -1e3  # channel 2 can never fire after its ReLU
    result = search_top_activations(model, dataset_with_duplicates(), "conv1", k=3)
    assert 2 in result.dead_channels()


def test_receptive_field_boxes_follow_the_layer_stack():
    model = build_model("vgg", 3, 6, 32).eval()
    field = receptive_field(split_at(model, "conv3")[0])
    assert (field.size, field.jump) == (18, 4)
    assert field.start == 1.5  # unit (0, 0) is centred between pixels 1 and 2
    assert field.box(0, 0, 32) == (0, 0, 11, 11)  # pixels -7..10, clipped at the border


def test_channel_ranges_are_parsed_and_checked():
    assert parse_channels(["0-3", "7"], 8) == [0, 1, 2, 3, 7]
    with pytest.raises(UserError, match="out of range"):
        parse_channels(["6-9"], 8)


def test_cli_writes_json_overview_and_channel_figures(trained_shapes_checkpoint, tmp_path):
    code = mas.main(["--checkpoint", str(trained_shapes_checkpoint), "--layer", "conv2",
                     "--k", "4", "--project", "--out", str(tmp_path)])
    assert code == 0
    report = json.loads((tmp_path / "shapes_conv2_top4.json").read_text())
    assert report["images_scanned"] == 2000 and len(report["channels"]) == 8
    assert all(len(entry["indices"]) == 4 for entry in report["channels"].values())
    assert (tmp_path / "shapes_conv2_overview.png").exists()
    assert len(list(tmp_path.glob("shapes_conv2_channel*.png"))) == 8
    assert mas.main(["--checkpoint", str(trained_shapes_checkpoint), "--layer", "fc",
                     "--k", "3", "--out", str(tmp_path)]) == 0
    classes = json.loads((tmp_path / "shapes_fc_top3.json").read_text())["channels"]
    assert list(classes) == list(DATASET_INFO["shapes"].classes)


def test_the_overview_puts_each_units_projections_beside_its_patches(
        trained_shapes_checkpoint, tmp_path, monkeypatch):
    """Zeiler & Fergus's Fig. 2 as rows: each unit's top activations projected (here by the
    DeconvNet: the simple net has max pools) and cropped to the same receptive-field boxes as its
    patches; one projection checked against a direct DeconvNet projection of that image."""
    drawn = {}
    real = mas.plot_overview

    def keep(crops, labels, title, projection_crops=None, projection_label="projections"):
        drawn.update(crops=crops, projections=projection_crops, label=projection_label)
        return real(crops, labels, title, projection_crops, projection_label)

    monkeypatch.setattr(mas, "plot_overview", keep)
    assert mas.main(["--checkpoint", str(trained_shapes_checkpoint), "--layer", "conv2",
                     "--channels", "2", "5", "--k", "3", "--project",
                     "--out", str(tmp_path)]) == 0
    assert drawn["label"] == "DeconvNet projection"
    assert [[c.shape for c in row] for row in drawn["projections"]] == \
        [[c.shape for c in row] for row in drawn["crops"]]
    report = json.loads((tmp_path / "shapes_conv2_top3.json").read_text())
    model, info, _ = load_model(trained_shapes_checkpoint)
    image = load_dataset("shapes", "test").images[report["channels"]["ch 5"]["indices"][1]]
    projection = compute_projections(model, info.normalize(image[None]), "conv2",
                                     torch.tensor([[5]]))[0][0, 0]
    shown = signed_display(projection, mas.PROJECTION_QUANTILE)
    row, col = report["channels"]["ch 5"]["positions"][1]
    top, left, bottom, right = receptive_field(
        split_at(model, "conv2")[0]).box(row, col, info.image_size)
    assert torch.allclose(drawn["projections"][1][1], shown[:, top:bottom, left:right],
                          atol=1e-5)


def test_the_overview_headers_sit_above_every_crop_of_the_first_row():
    """A crop narrower than its cell shrinks its axes; a header drawn as that axes' title sat
    low, over the taller crops beside it (seen on AlexNet's conv2)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    generator = torch.Generator().manual_seed(0)
    crops = [[torch.rand(3, 25 if rank == 4 else 40, 40, generator=generator)
              for rank in range(9)] for _ in range(3)]
    figure = mas.plot_overview(crops, ["ch 0", "ch 1", "ch 2"], "title", crops, "projections")
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # places the crops' axes by their aspect, and the titles with them
    renderer = canvas.get_renderer()
    texts = [*figure.texts, *(axis.title for axis in figure.axes)]
    headers = {text.get_text(): text.get_window_extent(renderer) for text in texts
               if text.get_text() in ("projections", "images")}
    assert len(headers) == 2
    first_row = [axis for axis in figure.axes if axis.get_visible() and axis.axison
                 and axis.get_subplotspec().rowspan.start == 0]
    crop_tops = max(axis.get_window_extent(renderer).y1 for axis in first_row)
    assert all(box.y0 >= crop_tops for box in headers.values())


def test_main_reports_every_file_it_wrote(trained_shapes_checkpoint, tmp_path):
    written = []
    assert mas.main(["--checkpoint", str(trained_shapes_checkpoint), "--out", str(tmp_path),
                     "--layer", "conv1", "--k", "2", "--channels", "0", "1"], written) == 0
    assert written == [tmp_path / "shapes_conv1_top2.json", tmp_path / "shapes_conv1_overview.png",
                       tmp_path / "shapes_conv1_channel000.png",
                       tmp_path / "shapes_conv1_channel001.png"]
    assert set(written) == {*tmp_path.glob("*.png"), *tmp_path.glob("*.json")}


@pytest.mark.parametrize("argv, message", [(["--layer", "conv9"], "unknown layer"),
                                           (["--channels", "99"], "out of range")])
def test_cli_bad_input_exits_2_with_one_line(trained_shapes_checkpoint, tmp_path, capsys, argv,
                                             message):
    code = mas.main(["--checkpoint", str(trained_shapes_checkpoint), "--out", str(tmp_path),
                     *argv])
    assert code == 2
    lines = [line for line in stderr_lines(capsys.readouterr()) if "scanning" not in line]
    assert len(lines) == 1 and message in lines[0]


def test_the_default_overview_of_a_wide_layer_shows_its_strongest_channels(capsys):
    result = TopActivations.empty(40, 3, 4, "cpu")
    result.channel_max = torch.arange(40.0).roll(5)  # channel c peaks at (c - 5) mod 40
    chosen = mas.overview_channels(result)
    assert chosen == sorted(c for c in range(40) if (c - 5) % 40 >= 8)
    assert "the overview shows the 32 of the 40 channels" in capsys.readouterr().err
    narrow = TopActivations.empty(32, 3, 4, "cpu")
    assert mas.overview_channels(narrow) == list(range(32))


def clipped_net():
    """conv -> BatchNorm -> ReLU6 as torchvision's Conv2dNormActivation nests them, its weights
    large enough that most images drive every unit past the cap of 6."""
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU6())
    with torch.no_grad():
        block[0].weight.mul_(40)
    return torch.nn.Sequential(block, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                               torch.nn.Linear(4, 3)).double().eval()


def test_a_clipped_layer_is_ranked_by_its_pre_activation_where_relu6_ties():
    """MobileNetV2's ReLU6 caps a unit at 6: ranked by the clipped maximum, the top images tie
    at 6.00 in index order. The scan ranks them by the maximum of the pre-activation (the
    ReLU6's input, brute force here), which keeps the clipped order wherever it is not tied;
    the mean, and an unclipped layer, are ranked as before."""
    from model.nets.layers import clipped_activation

    net = clipped_net()
    assert clipped_activation(net, "0") == "0.2"
    assert clipped_activation(build_model("vgg", 3, 5, 16), "conv2") is None  # plain ReLU
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (40, 3, 8, 8), generator=generator, dtype=torch.uint8)
    dataset = ImageDataset(DATASET_INFO["shapes"], images, torch.zeros(40, dtype=torch.int64))
    result = search_top_activations(net, dataset, "0", k=9, batch_size=16)
    with torch.no_grad():
        before = net[0][:2](dataset.info.normalize(images).double())  # conv + BatchNorm
    peaks = before.flatten(2).amax(2).T  # (K, N)
    expected = torch.sort(peaks, dim=1, descending=True, stable=True)
    assert torch.equal(result.indices, expected.indices[:, :9])
    assert torch.allclose(result.values, expected.values[:, :9], atol=1e-12, rtol=0)
    clipped = peaks.clamp(0, 6)
    assert (clipped.gather(1, result.indices) == 6).sum() >= 20  # the ties it breaks
    kept = clipped.gather(1, result.indices)
    assert (kept[:, :-1] >= kept[:, 1:]).all()  # never against the clipped order
    mean = search_top_activations(net, dataset, "0", k=9, score="mean", batch_size=16)
    clipped_mean = before.clamp(0, 6).flatten(2).mean(2).T
    assert torch.allclose(mean.values, torch.sort(clipped_mean, 1, descending=True).values[:, :9],
                          atol=1e-12, rtol=0)
