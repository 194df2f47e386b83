"""Every row of README "When something goes wrong": a careless or unlucky user's command, run
through the script's ``main`` as the shell would, fails with one clear line and exit code 2 and
leaves the user's files as they were.

Helpers: ``cli`` runs a script in-process and returns (exit code, stderr lines);
``assert_refused`` checks the one-line contract and the words the user must see.
"""
import copy
import dataclasses
import hashlib
import json
import subprocess
import sys
import time
from urllib.error import URLError

import matplotlib.figure
import pytest
import torch
import torchvision.datasets
from PIL import Image

import class_activation_maps
import deconvnet
import evaluate_attributions
import feature_maps
import gradient_ascent
import max_activation_search
import model.datasets
import model.images
import model.runtime
import occlusion_sensitivity
import train_cnn
from conftest import ROOT, stderr_lines
from model.architectures import build_model
from model.checkpoint import load_checkpoint, load_model, save_checkpoint, snapshot_path
from model.datasets import DATASET_INFO, ImageDataset
from model.errors import UserError
from model.heatmaps import normalize_maps

METHOD_SCRIPTS = {
    "occlusion_sensitivity": occlusion_sensitivity,
    "class_activation_maps": class_activation_maps,
    "deconvnet": deconvnet,
    "max_activation_search": max_activation_search,
    "feature_maps": feature_maps,
    "gradient_ascent": gradient_ascent,
    "evaluate_attributions": evaluate_attributions,
}
SCRIPTS = {**METHOD_SCRIPTS, "train_cnn": train_cnn}
IMAGE_SCRIPTS = ["occlusion_sensitivity", "class_activation_maps", "deconvnet", "feature_maps"]
# Settings that make a successful run of each method script take about a second.
FAST = {
    "occlusion_sensitivity": ["--index", "0", "1", "--stride", "4"],
    "class_activation_maps": ["--index", "0", "1", "--gallery", "0", "--smooth", "2"],
    "deconvnet": ["--index", "0", "--layer", "conv2", "--top", "2"],
    "max_activation_search": ["--layer", "conv1", "--k", "2", "--channels", "0"],
    "feature_maps": ["--index", "0", "--num-images", "16", "--show", "filters", "maps", "dead"],
    "gradient_ascent": ["--steps", "4", "--classes", "0", "1"],
    "evaluate_attributions": ["--num-images", "4", "--methods", "gradcam", "random",
                              "--sanity-images", "2", "--steps", "2"],
}
TRAIN_QUICK = ["--dataset", "shapes", "--arch", "simple", "--max-train-images", "256",
               "--batch-size", "64", "--no-progress"]


def cli(script, argv, capsys):
    """Run ``script``'s main as the shell would; return (exit code, non-empty stderr lines)."""
    capsys.readouterr()  # forget what earlier steps printed
    try:
        code = SCRIPTS[script].main([str(arg) for arg in argv])
    except SystemExit as exit_info:  # argparse errors leave through sys.exit(2)
        code = exit_info.code
    return code, stderr_lines(capsys.readouterr())


def assert_refused(code, lines, *fragments):
    """Exit code 2, exactly one stderr line, no traceback, and each fragment in that line."""
    assert code == 2, lines
    assert len(lines) == 1, lines
    assert "error:" in lines[0] and "Traceback" not in lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def method_argv(script, checkpoint, tmp_path, *extra):
    return ["--checkpoint", checkpoint, "--out", tmp_path / "out", *extra]


@pytest.fixture(scope="module")
def mnist_checkpoint(tmp_path_factory):
    """An untrained MNIST ``simple`` checkpoint: loads like a real one, needs the MNIST files."""
    path = tmp_path_factory.mktemp("mnist") / "mnist_simple.pt"
    model_args = {"arch": "simple", "in_channels": 1, "num_classes": 10, "image_size": 28,
                  "vgg_plan": "small"}
    history = [{"epoch": 1, "test_accuracy": 0.1}]
    save_checkpoint(path, model=build_model(**model_args), model_args=model_args,
                    info=DATASET_INFO["mnist"], epoch=1, epochs=1, history=history,
                    train_args={})
    return path


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Two uninterrupted epochs (seed 0) with a snapshot per epoch: the reference run."""
    out = tmp_path_factory.mktemp("straight") / "straight.pt"
    assert train_cnn.main(TRAIN_QUICK + ["--epochs", "2", "--save-every-epoch",
                                         "--out", str(out)]) == 0
    return out


# --- Checkpoints ------------------------------------------------------------------------------

@pytest.mark.parametrize("script", METHOD_SCRIPTS)
def test_missing_checkpoint_names_the_file_and_the_command(script, tmp_path, monkeypatch,
                                                          capsys):
    monkeypatch.chdir(tmp_path)  # no outputs/checkpoints here
    code, lines = cli(script, ["--dataset", "mnist", "--arch", "simple", "--out", "out"], capsys)
    assert_refused(code, lines, "no checkpoint at outputs/checkpoints/mnist_simple.pt",
                   "python train_cnn.py --dataset mnist --arch simple")
    code, lines = cli(script, ["--checkpoint", "mine.pt", "--out", "out"], capsys)
    assert_refused(code, lines, "no checkpoint at mine.pt", "--out mine.pt")


def unusable_checkpoints(folder, good):
    """name -> (path, words of the refusal): corrupt, truncated, foreign and broken files."""
    data = good.read_bytes()
    files = {"truncated": data[:len(data) // 2], "empty": b"", "text": b"not a checkpoint\n",
             "random bytes": bytes(range(256)) * 64}
    paths = {}
    for name, content in files.items():
        paths[name] = (folder / f"{name}.pt", "not a readable checkpoint")
        paths[name][0].write_bytes(content)
    paths["foreign torch file"] = (folder / "foreign.pt", "not a cnn-viz checkpoint")
    torch.save({"state_dict": {"weight": torch.zeros(2)}}, paths["foreign torch file"][0])
    paths["pickled module"] = (folder / "module.pt", "pickled Python objects")
    torch.save(build_model("simple", 3, 6, 32), paths["pickled module"][0])
    checkpoint = torch.load(good, weights_only=True)
    checkpoint["model_state"]["fc.weight"][0, 0] = float("nan")
    paths["NaN weights"] = (folder / "nan.pt", "NaN")
    torch.save(checkpoint, paths["NaN weights"][0])
    return paths


@pytest.mark.parametrize("script", SCRIPTS)
def test_corrupt_truncated_or_foreign_checkpoint_is_refused_and_kept(
        script, trained_shapes_checkpoint, tmp_path, capsys):
    for name, (path, words) in unusable_checkpoints(tmp_path, trained_shapes_checkpoint).items():
        before = path.read_bytes()
        if script == "train_cnn":  # a new run must not overwrite it, --resume must not load it
            runs = [TRAIN_QUICK + ["--out", path], TRAIN_QUICK + ["--out", path, "--resume"]]
        else:
            runs = [method_argv(script, path, tmp_path)]
        for argv in runs:
            code, lines = cli(script, argv, capsys)
            assert_refused(code, lines, str(path), words)
        assert path.read_bytes() == before, name


@pytest.mark.parametrize("script", SCRIPTS)
def test_checkpoint_of_another_dataset_or_arch_is_refused(script, trained_shapes_checkpoint,
                                                         tmp_path, monkeypatch, capsys):
    path = tmp_path / "shapes_simple.pt"
    path.write_bytes(trained_shapes_checkpoint.read_bytes())
    if script == "train_cnn":
        runs = [(["--dataset", "mnist", "--arch", "simple", "--out", path], "not 'mnist'"),
                (["--dataset", "shapes", "--arch", "vgg", "--out", path], "not 'vgg'"),
                (["--arch", "vgg", "--resume", "--out", path], "not 'vgg'")]
    else:
        runs = [(method_argv(script, path, tmp_path, "--dataset", "mnist"), "not 'mnist'"),
                (method_argv(script, path, tmp_path, "--arch", "vgg"), "not 'vgg'")]
        # The default checkpoint of --dataset/--arch must be what its name says.
        monkeypatch.chdir(tmp_path)
        default = tmp_path / "outputs" / "checkpoints" / "shapes_vgg.pt"
        default.parent.mkdir(parents=True)
        default.write_bytes(path.read_bytes())
        runs.append((["--out", tmp_path / "out"], "arch 'simple', not 'vgg'"))
    for argv, words in runs:
        code, lines = cli(script, argv, capsys)
        assert_refused(code, lines, words)
    assert path.read_bytes() == trained_shapes_checkpoint.read_bytes()


# --- Options out of range ---------------------------------------------------------------------

LAYER_FLAG = {"class_activation_maps": "--layer", "deconvnet": "--layer",
              "max_activation_search": "--layer", "feature_maps": "--layers",
              "gradient_ascent": "--layer"}


@pytest.mark.parametrize("script", LAYER_FLAG)
def test_unknown_layer_lists_the_valid_names(script, trained_shapes_checkpoint, tmp_path,
                                             capsys):
    flag = LAYER_FLAG[script]
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                          flag, "conv9"), capsys)
    assert_refused(code, lines, "unknown layer 'conv9'", "valid layers: conv1, relu1, pool1")
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                          flag, "flatten"), capsys)
    assert_refused(code, lines, "not in the convolutional part", "conv1, conv2")


@pytest.mark.parametrize("script, argv, words", [
    ("deconvnet", ["--layer", "conv1", "--channel", "8"], "--channel 8: channel out of range"),
    ("max_activation_search", ["--layer", "conv1", "--channels", "0", "8"],
     "--channels 8 is out of range: the layer has 8 channels (0-7)"),
    ("max_activation_search", ["--layer", "conv1", "--channels", "5-2"], "an empty range"),
    ("gradient_ascent", ["--layer", "conv1", "--filters", "0-8"],
     "--filters 8 is out of range: the layer has 8 channels (0-7)"),
    ("gradient_ascent", ["--filters", "3"], "--filters and --neuron need --layer"),
])
def test_filters_or_channel_out_of_range(script, argv, words, trained_shapes_checkpoint,
                                         tmp_path, capsys):
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path, *argv),
                      capsys)
    assert_refused(code, lines, words)


@pytest.mark.parametrize("script", IMAGE_SCRIPTS + ["gradient_ascent"])
@pytest.mark.parametrize("name", ["dog", "6", "-1"])
def test_unknown_class_name_or_index(script, name, trained_shapes_checkpoint, tmp_path,
                                     capsys):
    flag = "--classes" if script == "gradient_ascent" else "--target"
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                          flag, name), capsys)
    assert_refused(code, lines, f"{flag} {name}", "0-5")
    assert "unknown class" in lines[0] or "out of range" in lines[0]


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_index_past_the_split(script, trained_shapes_checkpoint, tmp_path, capsys):
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                          "--index", "0", "2000"), capsys)
    assert_refused(code, lines, "--index 2000 is past the shapes test split",
                   "indices 0-1999")


def test_patch_larger_than_the_image(trained_shapes_checkpoint, tmp_path, capsys):
    code, lines = cli("occlusion_sensitivity", method_argv(
        "occlusion_sensitivity", trained_shapes_checkpoint, tmp_path, "--patch", "33"), capsys)
    assert_refused(code, lines, "--patch 33 is larger than the 32x32 image")


@pytest.mark.parametrize("value", ["0", "-2"])
def test_stride_zero_or_negative(value, trained_shapes_checkpoint, tmp_path, capsys):
    code, lines = cli("occlusion_sensitivity", method_argv(
        "occlusion_sensitivity", trained_shapes_checkpoint, tmp_path, "--stride", value),
        capsys)
    assert_refused(code, lines, "--stride", "must be a positive integer")


@pytest.mark.parametrize("script, flag, value, words", [
    ("max_activation_search", "--k", "0", "must be a positive integer"),
    ("max_activation_search", "--k", "-3", "must be a positive integer"),
    ("max_activation_search", "--k", "2001", "more than the 2000 images"),
    *[(script, "--batch-size", "0", "must be a positive integer")
      for script in [*IMAGE_SCRIPTS, "max_activation_search", "train_cnn"]],
    ("train_cnn", "--batch-size", "-1", "must be a positive integer"),
    ("train_cnn", "--epochs", "0", "must be a positive integer"),
    ("train_cnn", "--epochs", "-1", "must be a positive integer"),
    ("train_cnn", "--lr", "0", "must be a positive number"),
    ("train_cnn", "--lr", "-0.1", "must be a positive number"),
    ("train_cnn", "--lr", "nan", "must be a positive number"),
    ("gradient_ascent", "--lr", "0", "must be a positive number"),
])
def test_zero_or_negative_k_batch_size_epochs_lr(script, flag, value, words,
                                                 trained_shapes_checkpoint, tmp_path, capsys):
    argv = ([flag, value, "--out", tmp_path / "x.pt"] if script == "train_cnn" else
            method_argv(script, trained_shapes_checkpoint, tmp_path, flag, value))
    code, lines = cli(script, argv, capsys)
    assert_refused(code, lines, flag, words)


# --- Image files ------------------------------------------------------------------------------

@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_missing(script, trained_shapes_checkpoint, tmp_path, capsys):
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                          "--image", tmp_path / "cat.png"), capsys)
    assert_refused(code, lines, "cat.png: no such file")


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_image_that_is_not_an_image(script, trained_shapes_checkpoint, tmp_path, capsys):
    fake = tmp_path / "notes.png"
    fake.write_text("shopping list")
    truncated = tmp_path / "half.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    for path in (fake, truncated, tmp_path):  # text, a cut-off PNG, a folder
        code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                              "--image", path), capsys)
        assert_refused(code, lines, f"--image {path}: not a readable image")


def test_grayscale_for_an_rgb_model_and_rgb_for_a_grayscale_model_are_converted(tmp_path,
                                                                               capsys):
    gray, rgb = tmp_path / "gray.png", tmp_path / "rgb.png"
    Image.new("L", (32, 32), 90).save(gray)
    Image.new("RGB", (28, 28), (255, 0, 0)).save(rgb)
    pixels = model.images.load_image_file(gray, DATASET_INFO["shapes"])
    assert pixels.shape == (3, 32, 32) and (pixels == 90).all()
    assert "converted" in capsys.readouterr().err
    pixels = model.images.load_image_file(rgb, DATASET_INFO["mnist"])
    assert pixels.shape == (1, 28, 28) and (pixels == 76).all()  # ITU-R 601 luma of red
    assert "from RGB to L" in capsys.readouterr().err


def test_wrong_size_is_resized_and_said(trained_shapes_checkpoint, tmp_path, capsys):
    path = tmp_path / "wide.png"
    Image.new("L", (100, 60), 200).save(path)
    code = occlusion_sensitivity.main(["--checkpoint", str(trained_shapes_checkpoint),
                                       "--image", str(path), "--stride", "8",
                                       "--out", str(tmp_path / "out")])
    assert code == 0
    err = capsys.readouterr().err
    assert f"note: resized {path} from 100x60 to 32x32" in err
    assert f"note: converted {path} from L to RGB" in err
    assert (tmp_path / "out" / "occlusion_wide.png").exists()


@pytest.mark.parametrize("script", IMAGE_SCRIPTS)
def test_huge_image_is_refused_before_decoding(script, trained_shapes_checkpoint, tmp_path,
                                               monkeypatch, capsys):
    path = tmp_path / "poster.png"
    Image.new("RGB", (120, 100)).save(path)
    monkeypatch.setattr(model.images, "MAX_IMAGE_PIXELS", 120 * 100 - 1)
    monkeypatch.setattr(Image.Image, "convert", lambda *a, **k: pytest.fail("decoded"))
    code, lines = cli(script, method_argv(script, trained_shapes_checkpoint, tmp_path,
                                          "--image", path), capsys)
    assert_refused(code, lines, f"--image {path}: 120x100 is larger than", "shrink it first")


# --- Environment ------------------------------------------------------------------------------

def test_cam_on_a_net_without_a_global_average_pooling_head(trained_shapes_checkpoint,
                                                             tmp_path, capsys):
    code, lines = cli("evaluate_attributions", method_argv(
        "evaluate_attributions", trained_shapes_checkpoint, tmp_path, "--methods", "cam"),
        capsys)
    assert_refused(code, lines, "cam needs the layer to feed global average pooling",
                   "leave cam out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
@pytest.mark.parametrize("script", SCRIPTS)
def test_cuda_asked_for_without_cuda(script, trained_shapes_checkpoint, tmp_path, capsys):
    argv = (TRAIN_QUICK + ["--out", tmp_path / "x.pt"] if script == "train_cnn"
            else method_argv(script, trained_shapes_checkpoint, tmp_path))
    code, lines = cli(script, argv + ["--device", "cuda"], capsys)
    assert_refused(code, lines, "--device cuda", "no CUDA device is available",
                   "--device cpu")


def mnist_argv(script, mnist_checkpoint, tmp_path, data_dir):
    if script == "train_cnn":
        return ["--dataset", "mnist", "--arch", "simple", "--data-dir", data_dir,
                "--out", tmp_path / "m.pt"]
    return method_argv(script, mnist_checkpoint, tmp_path, "--data-dir", data_dir)


DATA_SCRIPTS = [*IMAGE_SCRIPTS, "max_activation_search", "train_cnn"]


@pytest.mark.parametrize("script", DATA_SCRIPTS)
def test_data_dir_not_writable(script, mnist_checkpoint, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "data"
    blocker.write_text("a file where the data folder should be")
    code, lines = cli(script, mnist_argv(script, mnist_checkpoint, tmp_path, blocker), capsys)
    assert_refused(code, lines, f"--data-dir {blocker} is a file", "--dataset shapes")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(model.datasets, "_download", read_only)
    data_dir = tmp_path / "read_only"
    code, lines = cli(script, mnist_argv(script, mnist_checkpoint, tmp_path, data_dir), capsys)
    assert_refused(code, lines, f"cannot write in --data-dir {data_dir} (Permission denied)",
                   f"{data_dir / 'MNIST' / 'raw'}", "--dataset shapes")


@pytest.mark.parametrize("script", DATA_SCRIPTS)
def test_no_network_during_a_download(script, mnist_checkpoint, tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(torchvision.datasets.mnist, "download_and_extract_archive", offline)
    code, lines = cli(script, mnist_argv(script, mnist_checkpoint, tmp_path, tmp_path / "d"),
                      capsys)
    assert_refused(code, lines, "mnist: the download failed: no network connection",
                   "train-images-idx3-ubyte", "--dataset shapes")


@pytest.mark.parametrize("script", SCRIPTS)
def test_out_not_writable_or_a_file(script, trained_shapes_checkpoint, tmp_path, monkeypatch,
                                    capsys):
    blocker = tmp_path / "taken"
    blocker.write_text("keep me")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    if script == "train_cnn":
        cases = [(blocker / "x.pt", f"{blocker} is a file, not a folder"),
                 (folder, "it is a folder, and --out names a file")]
        argv = lambda out: TRAIN_QUICK + ["--out", out]  # noqa: E731
    else:
        cases = [(blocker, "it is a file, and --out names a folder"),
                 (blocker / "sub", f"{blocker} is a file, not a folder")]
        argv = lambda out: ["--checkpoint", trained_shapes_checkpoint, "--out", out]  # noqa
    for out, words in cases:
        code, lines = cli(script, argv(out), capsys)
        assert_refused(code, lines, f"cannot write --out {out}", words)

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(model.runtime.tempfile, "TemporaryFile", read_only)
    code, lines = cli(script, argv(tmp_path / "locked" / "y.pt"), capsys)
    assert_refused(code, lines, "cannot write --out", "Permission denied")
    assert blocker.read_text() == "keep me"


# --- Training ---------------------------------------------------------------------------------

HANG_IN_EPOCH_TWO = """
import pathlib, runpy, sys, time
import model.engine as engine
marker, steps_per_epoch = pathlib.Path(sys.argv[1]), int(sys.argv[2])
schedule = engine.learning_rate_at
def hang_mid_epoch_two(step, *args, **kwargs):
    if step == steps_per_epoch + 2:
        marker.touch()
        time.sleep(600)
    return schedule(step, *args, **kwargs)
engine.learning_rate_at = hang_mid_epoch_two
sys.argv = ["train_cnn.py"] + sys.argv[3:]
runpy.run_path("train_cnn.py", run_name="__main__")
"""


def test_kill_9_mid_epoch_keeps_the_last_epoch_and_resume_matches_a_straight_run(
        straight_run, tmp_path):
    """A real process killed with SIGKILL in the middle of epoch 2 (Ctrl-C: test_train_cli)."""
    out, marker = tmp_path / "killed.pt", tmp_path / "in_epoch_two"
    argv = TRAIN_QUICK + ["--epochs", "2", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", HANG_IN_EPOCH_TWO, str(marker), "4",
                                *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not marker.exists():
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "training never reached epoch 2"
            time.sleep(0.2)
    finally:
        process.kill()  # SIGKILL: no handler, no cleanup
        process.wait()
        process.stderr.close()
    model_, _, checkpoint = load_model(out, dataset="shapes", arch="simple")
    assert checkpoint["epoch"] == 1
    assert all(torch.isfinite(p).all() for p in model_.parameters())
    assert not list(tmp_path.glob(".*.tmp"))

    assert train_cnn.main(argv + ["--resume"]) == 0
    resumed, straight = load_checkpoint(out), load_checkpoint(straight_run)
    assert resumed["epoch"] == 2
    assert resumed["test_accuracy"] == straight["test_accuracy"]
    for key, value in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key


def test_nan_loss_stops_training_and_keeps_the_previous_checkpoint(straight_run, tmp_path,
                                                                    capsys):
    out = tmp_path / "diverging.pt"
    out.write_bytes(snapshot_path(straight_run, 1).read_bytes())  # a run after epoch 1
    before = out.read_bytes()
    code, lines = cli("train_cnn", TRAIN_QUICK + ["--epochs", "2", "--resume", "--lr", "1e30",
                                                  "--out", out], capsys)
    assert_refused(code, lines, "in epoch 2", "try a smaller --lr", f"{out} keeps epoch 1")
    assert "NaN" in lines[0] or "nan" in lines[0] or "inf" in lines[0]
    assert out.read_bytes() == before
    model_, _, _ = load_model(out)
    assert all(torch.isfinite(p).all() for p in model_.parameters())


# --- Every error, reproducibility, heatmaps, atomic files ------------------------------------

def break_loading(monkeypatch, exception):
    """Make every script fail right after parsing its arguments with ``exception``."""
    def fail(*args, **kwargs):
        raise exception

    monkeypatch.setattr(model.images, "load_model", fail)
    monkeypatch.setattr(train_cnn, "apply_recipe", fail)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_error_is_one_line_exit_2_and_debug_shows_the_traceback(script, tmp_path,
                                                                     monkeypatch, capsys):
    argv = (["--resume", "--out", tmp_path / "none.pt"] if script == "train_cnn"
            else ["--checkpoint", tmp_path / "none.pt", "--out", tmp_path / "out"])
    code, lines = cli(script, argv, capsys)
    assert_refused(code, lines, "no checkpoint at")
    assert "Traceback" not in capsys.readouterr().err
    with pytest.raises(UserError):
        SCRIPTS[script].main([str(arg) for arg in argv] + ["--debug"])

    break_loading(monkeypatch, RuntimeError("something nobody expected\nsecond line"))
    code, lines = cli(script, argv, capsys)
    assert_refused(code, lines, "unexpected RuntimeError: something nobody expected",
                   "rerun with --debug")
    break_loading(monkeypatch, KeyboardInterrupt())
    code, lines = cli(script, argv, capsys)
    assert code == 130 and len(lines) == 1 and lines[0].startswith("interrupted")


TIMINGS = ("seconds", "ms_per_image", "peak_memory_mib")  # evaluation.json's measured cost


def without_timings(path):
    """A file's bytes; for a JSON, with the wall-clock measurements (which vary) taken out."""
    if path.suffix != ".json":
        return path.read_bytes()

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMINGS}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return json.dumps(strip(json.loads(path.read_text()))).encode()


@pytest.mark.parametrize("script", METHOD_SCRIPTS)
def test_same_seed_gives_identical_outputs_on_cpu(script, trained_shapes_checkpoint, tmp_path):
    def outputs(seed, name):
        out = tmp_path / name
        argv = ["--checkpoint", str(trained_shapes_checkpoint), "--device", "cpu", "--seed",
                str(seed), "--out", str(out), *FAST[script]]
        assert METHOD_SCRIPTS[script].main(argv) == 0
        return {path.name: hashlib.sha256(without_timings(path)).hexdigest()
                for path in sorted(out.iterdir())}

    first = outputs(3, "first")
    assert first and first == outputs(3, "second")  # every PNG and JSON, byte for byte
    if script in ("class_activation_maps", "gradient_ascent"):  # seeded noise and start
        assert outputs(4, "other_seed") != first


def zero_map_and_constant_image_cases():
    """(model, inputs) pairs: a net whose every activation is 0, and a constant image."""
    torch.manual_seed(0)
    net = build_model("vgg", 3, 6, 16).eval()
    dead = copy.deepcopy(net)
    for parameter in dead.parameters():
        parameter.data.zero_()
    return {"all-zero maps": (dead, torch.rand(2, 3, 16, 16)),
            "constant image": (net, torch.full((2, 3, 16, 16), 0.6))}


@pytest.mark.parametrize("case", ["all-zero maps", "constant image"])
def test_heatmaps_are_finite_for_zero_maps_and_constant_images(case):
    net, pixels = zero_map_and_constant_image_cases()[case]
    info = dataclasses.replace(DATASET_INFO["shapes"], image_size=16)
    inputs, targets = info.normalize(pixels), torch.tensor([0, 3])

    def finite(tensor, unit_range=False):
        assert torch.isfinite(tensor).all()
        if unit_range:
            assert tensor.min() >= 0 and tensor.max() <= 1

    fill = occlusion_sensitivity.baseline_images(inputs, info, "blur", 4)
    result = occlusion_sensitivity.compute_occlusion(net, inputs, targets, fill, 4, 2)
    for field in dataclasses.fields(result):
        finite(getattr(result, field.name).float())
    finite(normalize_maps(result.pixel_drop), unit_range=True)
    for method in class_activation_maps.METHODS:
        for smooth in (0, 2):
            finite(class_activation_maps.compute_cam(net, inputs, targets, method, "conv4",
                                                     smooth=smooth), unit_range=True)
    for rule in deconvnet.RULES:
        projections, activations = deconvnet.compute_projections(
            net, inputs, "conv3", torch.tensor([[0, 1], [2, 3]]), rule)
        finite(projections)
        finite(torch.stack([deconvnet.projection_display(p) for p in projections[:, 0]]),
               unit_range=True)
        finite(deconvnet.compute_input_gradient(net, inputs, targets, rule))
    dataset = ImageDataset(info, (pixels * 255).to(torch.uint8), torch.tensor([0, 1]))
    scan = max_activation_search.search_top_activations(net, dataset, "conv2", k=2)
    finite(scan.values)
    report = feature_maps.dead_filter_report(net, dataset, ["conv1", "conv4"], "cpu")
    for entry in report.values():
        finite(entry["active_share"], unit_range=True)
    images, reached = gradient_ascent.gradient_ascent(net, info, torch.tensor([0, 1]), steps=3)
    finite(images, unit_range=True)
    finite(reached)


def test_an_interrupted_png_write_leaves_the_old_file_and_no_half_file(
        trained_shapes_checkpoint, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    out.mkdir()
    target = out / "occlusion_test_0.png"
    target.write_bytes(b"the PNG of an earlier run")
    real_savefig = matplotlib.figure.Figure.savefig

    def half_then_ctrl_c(figure, file, **kwargs):
        real_savefig(figure, file, **kwargs)
        file.truncate(100)  # half-written ...
        raise KeyboardInterrupt  # ... when Ctrl-C arrives

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", half_then_ctrl_c)
    code, lines = cli("occlusion_sensitivity", ["--checkpoint", trained_shapes_checkpoint,
                                                "--index", "0", "--stride", "8", "--out", out],
                      capsys)
    assert code == 130 and lines == ["interrupted"]
    assert target.read_bytes() == b"the PNG of an earlier run"
    assert [path.name for path in out.iterdir()] == [target.name]  # no temporary file left
    # Every script writes its figures and JSON through model.runtime's atomic writer.
    for name in SCRIPTS:
        source = (ROOT / f"{name}.py").read_text()
        assert ".savefig(" not in source and "open(" not in source, name
