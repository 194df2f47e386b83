"""--save-maps of the method scripts: the raw maps, their targets and the settings in an .npz
that np.load reads without pickle, equal to the registered method called on the same images."""
import numpy as np
import pytest
import torch

import class_activation_maps
import deconvnet
import occlusion_sensitivity
from conftest import stderr_lines
from model.attribution import METHODS
from model.nets.checkpoint import load_model
from model.units.mirror import compute_projections

INDICES = [0, 2]  # shapes test images of classes 3 and 2: a different target per image


def saved_maps(script, checkpoint, tmp_path, *argv):
    """Run ``script`` on the test images ``INDICES`` with ``--save-maps``; the file's arrays."""
    path = tmp_path / "m.npz"
    code = script.main(["--checkpoint", str(checkpoint), "--device", "cpu", "--index",
                        *map(str, INDICES), "--out", str(tmp_path / "out"), "--save-maps",
                        str(path), *argv])
    assert code == 0
    with np.load(path, allow_pickle=False) as data:
        saved = {key: data[key] for key in data.files}
    assert saved["maps"].dtype == np.float32 and saved["maps"].shape == (len(INDICES), 32, 32)
    assert saved["targets"].dtype == np.int64 and saved["targets"].shape == (len(INDICES),)
    assert saved["image_names"].tolist() == [f"test_{i}" for i in INDICES]
    assert saved["dataset"] == "shapes" and saved["image_size"] == 32
    assert saved["checkpoint"] == str(checkpoint) and saved["seed"] == 0
    return saved


def the_same_images(checkpoint, shapes_test_split):
    """The model, its DatasetInfo and the normalized (N, C, H, W) images the script explained."""
    model, info, _ = load_model(checkpoint, "cpu")
    return model, info, info.normalize(shapes_test_split.images[INDICES])


def assert_equal_maps(saved, direct):
    """Equal within float32 rounding: 1e-5 of the largest magnitude."""
    direct = direct.detach().cpu().numpy()
    assert saved.shape == direct.shape
    assert np.abs(saved - direct).max() <= 1e-5 * max(np.abs(direct).max(), 1e-12)


def test_occlusion_saves_the_registry_map_and_the_probabilities(trained_shapes_checkpoint,
                                                                shapes_test_split, tmp_path):
    saved = saved_maps(occlusion_sensitivity, trained_shapes_checkpoint, tmp_path,
                       "--target", "true")
    model, info, inputs = the_same_images(trained_shapes_checkpoint, shapes_test_split)
    targets = shapes_test_split.labels[INDICES]
    assert saved["targets"].tolist() == targets.tolist() == [3, 2]
    assert saved["method"] == "occlusion" and saved["baseline"] == "blur"
    assert (saved["patch"], saved["stride"]) == (4, 1)  # the defaults, resolved for 32 px
    direct = METHODS["occlusion"](model, inputs, targets, info=info)
    assert_equal_maps(saved["maps"], direct)
    assert saved["probability"].shape == (2, 29, 29)
    assert saved["tops"].tolist() == saved["lefts"].tolist() == list(range(29))


def test_cam_saves_one_array_per_method_and_the_first_as_maps(trained_shapes_checkpoint,
                                                              shapes_test_split, tmp_path):
    saved = saved_maps(class_activation_maps, trained_shapes_checkpoint, tmp_path,
                       "--method", "gradcam", "saliency", "--gallery", "0")
    model, info, inputs = the_same_images(trained_shapes_checkpoint, shapes_test_split)
    with torch.no_grad():
        predictions = model(inputs).argmax(1)
    assert saved["targets"].tolist() == predictions.tolist()  # --target pred
    assert saved["method"].tolist() == ["gradcam", "saliency"] and saved["layer"] == "conv2"
    assert np.array_equal(saved["maps"], saved["maps_gradcam"])
    options = dict(smooth=int(saved["smooth"]), upsample=str(saved["upsample"]),
                   max_channels=int(saved["max_channels"]))
    for method in ("gradcam", "saliency"):
        direct = METHODS[method](model, inputs, predictions, layer="conv2", **options)
        assert saved[f"maps_{method}"].dtype == np.float32
        assert_equal_maps(saved[f"maps_{method}"], direct)


def test_cam_saves_smoothed_and_counterfactual_maps_as_the_registry_gives_them(
        trained_shapes_checkpoint, shapes_test_split, tmp_path, capsys):
    saved = saved_maps(class_activation_maps, trained_shapes_checkpoint, tmp_path,
                       "--method", "gradcam", "scorecam", "--gallery", "0", "--aug-smooth",
                       "--eigen-smooth", "--counterfactual")
    assert "no counterfactual map for scorecam" in capsys.readouterr().err
    model, info, inputs = the_same_images(trained_shapes_checkpoint, shapes_test_split)
    with torch.no_grad():
        predictions = model(inputs).argmax(1)
    assert bool(saved["aug_smooth"]) and bool(saved["eigen_smooth"])
    assert "maps_scorecam:counterfactual" not in saved
    smoothing = dict(layer="conv2", aug_smooth=True, eigen_smooth=True)
    for column, options in (("gradcam", {}), ("scorecam", {}),
                            ("gradcam:counterfactual", {"counterfactual": True})):
        method = column.split(":")[0]
        direct = METHODS[method](model, inputs, predictions, **smoothing, **options)
        assert_equal_maps(saved[f"maps_{column}"], direct)
    assert not np.allclose(saved["maps_gradcam"], saved["maps_gradcam:counterfactual"])


def test_counterfactual_of_no_gradient_method_exits_2_with_one_line(trained_shapes_checkpoint,
                                                                    tmp_path, capsys):
    code = class_activation_maps.main(["--checkpoint", str(trained_shapes_checkpoint),
                                       "--method", "scorecam", "eigencam", "--counterfactual",
                                       "--gallery", "0", "--out", str(tmp_path)])
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and "applies to the gradient CAM methods" in lines[0]


def test_deconvnet_saves_the_rules_class_map_and_the_projections(trained_shapes_checkpoint,
                                                                  shapes_test_split, tmp_path):
    saved = saved_maps(deconvnet, trained_shapes_checkpoint, tmp_path, "--layer", "conv2",
                       "--top", "3", "--rule", "guided", "--target", "true")
    model, info, inputs = the_same_images(trained_shapes_checkpoint, shapes_test_split)
    targets = shapes_test_split.labels[INDICES]
    assert saved["targets"].tolist() == targets.tolist()
    assert saved["method"] == "guided-backprop" and saved["rule"] == "guided"
    assert_equal_maps(saved["maps"], METHODS["guided-backprop"](model, inputs, targets))
    channels = saved["channels_conv2"]
    assert channels.shape == (2, 3) and channels.dtype == np.int64
    projections, _ = compute_projections(model, inputs, "conv2", torch.from_numpy(channels),
                                         "guided")
    assert saved["projections_conv2"].shape == (2, 3, 3, 32, 32)
    assert_equal_maps(saved["projections_conv2"], projections)


@pytest.mark.parametrize("script", [occlusion_sensitivity, class_activation_maps, deconvnet])
def test_an_unwritable_save_maps_exits_2_with_one_line_before_any_work(
        script, trained_shapes_checkpoint, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")
    out = tmp_path / "out"
    for path, reason in ((tmp_path / "file" / "m.npz", "is a file, not a folder"),
                         (tmp_path, "it is a folder")):
        code = script.main(["--checkpoint", str(trained_shapes_checkpoint), "--device", "cpu",
                            "--out", str(out), "--save-maps", str(path)])
        lines = stderr_lines(capsys.readouterr())
        assert code == 2 and len(lines) == 1
        assert f"cannot write --save-maps {path}" in lines[0] and reason in lines[0]
        assert not out.exists()  # refused before the figures' folder is made


def test_incremental_occlusion_saves_the_plain_maps(trained_shapes_checkpoint, tmp_path):
    """occlusion_sensitivity.py --incremental writes the maps the plain run writes (float32:
    1e-4 of the largest |drop|, the issue's tolerance; measured 1.1e-5 on the trained shapes
    net), and --approximate outside (0, 1] is refused in one line."""
    plain = saved_maps(occlusion_sensitivity, trained_shapes_checkpoint, tmp_path / "plain")
    fast = saved_maps(occlusion_sensitivity, trained_shapes_checkpoint, tmp_path / "fast",
                      "--incremental")
    assert bool(fast["incremental"]) and not bool(plain["incremental"])
    scale = np.abs(plain["maps"]).max()
    assert np.abs(fast["maps"] - plain["maps"]).max() <= 1e-4 * scale
    assert np.abs(fast["probability"] - plain["probability"]).max() <= 1e-4


@pytest.mark.parametrize("tau", ["0", "1.5", "x"])
def test_approximate_out_of_range_is_refused(trained_shapes_checkpoint, capsys, tau):
    with pytest.raises(SystemExit) as stopped:
        occlusion_sensitivity.main(["--checkpoint", str(trained_shapes_checkpoint),
                                    "--approximate", tau])
    assert stopped.value.code == 2
    assert len(stderr_lines(capsys.readouterr())) == 1
