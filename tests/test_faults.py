"""Every row of docs/failures.md, "When something goes wrong": a careless or unlucky user's
command, run through the script's ``main`` as the shell would, fails with one clear line and exit
code 2 and
leaves the user's files as they were.

Helpers: ``cli`` runs a script in-process and returns (exit code, stderr lines);
``assert_refused`` checks the one-line contract and the words the user must see.
"""
import argparse
import copy
import dataclasses
import errno
import hashlib
import io
import json
import os
import pickle
import re
import signal
import stat
import struct
import subprocess
import sys
import time
import types
from urllib.error import URLError

import matplotlib.figure
import numpy as np
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
import model.cli.method_inputs
import model.cli.running
import model.data.datasets
import model.data.image_files
import model.nets.checkpoint
import model.runtime.files
import occlusion_sensitivity
import train_cnn
from conftest import ROOT, stderr_lines
from model.attribution import METHODS
from model.attribution.maps import normalize_maps
from model.attribution.occlusion import baseline_images, compute_occlusion
from model.data.datasets import DATASET_INFO, ImageDataset
from model.errors import UserError
from model.figures.heatmaps import signed_display
from model.nets.architectures import build_model
from model.nets.checkpoint import load_checkpoint, load_model, save_checkpoint, snapshot_path
from model.units import ascent, mirror
from model.units.activation_search import search_top_activations
from references import compute_input_gradient

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
    pixels = model.cli.method_inputs.load_image_file(gray, DATASET_INFO["shapes"])
    assert pixels.shape == (3, 32, 32) and (pixels == 90).all()
    assert "converted" in capsys.readouterr().err
    pixels = model.cli.method_inputs.load_image_file(rgb, DATASET_INFO["mnist"])
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
    monkeypatch.setattr(model.data.image_files, "MAX_IMAGE_PIXELS", 120 * 100 - 1)
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

    monkeypatch.setattr(model.data.datasets, "_download", read_only)
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

    monkeypatch.setattr(model.runtime.files.tempfile, "TemporaryFile", read_only)
    code, lines = cli(script, argv(tmp_path / "locked" / "y.pt"), capsys)
    assert_refused(code, lines, "cannot write --out", "Permission denied")
    assert blocker.read_text() == "keep me"


# --- Training ---------------------------------------------------------------------------------

HANG_IN_EPOCH_TWO = """
import pathlib, runpy, sys, time
from model.training import loop as engine
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


def wait_for_marker(process, marker, never, seconds=180):
    """Wait until a hanging subprocess has created ``marker``; fail with its stderr if it
    exits first, or with ``never`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not marker.exists():
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, never
        time.sleep(0.2)


def test_kill_9_mid_epoch_keeps_the_last_epoch_and_resume_matches_a_straight_run(
        straight_run, tmp_path):
    """A real process killed with SIGKILL in the middle of epoch 2 (Ctrl-C: test_train_cli)."""
    out, marker = tmp_path / "killed.pt", tmp_path / "in_epoch_two"
    argv = TRAIN_QUICK + ["--epochs", "2", "--out", str(out)]
    process = subprocess.Popen([sys.executable, "-c", HANG_IN_EPOCH_TWO, str(marker), "4",
                                *argv], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marker(process, marker, "training never reached epoch 2")
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

    monkeypatch.setattr(model.cli.method_inputs, "load_model", fail)
    monkeypatch.setattr(train_cnn, "resolve_device", fail)


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

    fill = baseline_images(inputs, info, "blur", 4)
    result = compute_occlusion(net, inputs, targets, fill, 4, 2)
    for field in dataclasses.fields(result):
        finite(getattr(result, field.name).float())
    finite(normalize_maps(result.pixel_drop), unit_range=True)
    for method in METHODS.values():  # every registered method, with and without SmoothGrad
        for smooth in (0, 2):
            maps = method(net, inputs, targets, layer="conv4", info=info, smooth=smooth,
                          stride=4, steps=4)
            finite(normalize_maps(maps.detach()), unit_range=True)
    for rule in mirror.RULES:
        projections, activations = mirror.compute_projections(
            net, inputs, "conv3", torch.tensor([[0, 1], [2, 3]]), rule)
        finite(projections)
        finite(torch.stack([signed_display(p) for p in projections[:, 0]]), unit_range=True)
        finite(compute_input_gradient(net, inputs, targets, rule))
    dataset = ImageDataset(info, (pixels * 255).to(torch.uint8), torch.tensor([0, 1]))
    scan = search_top_activations(net, dataset, "conv2", k=2)
    finite(scan.values)
    report = feature_maps.dead_filter_report(net, dataset, ["conv1", "conv4"], "cpu")
    for entry in report.values():
        finite(entry["active_share"], unit_range=True)
    images, reached = ascent.gradient_ascent(net, info, torch.tensor([0, 1]), steps=3)
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
    # Every script writes its figures and JSON through model.runtime.files's atomic writer.
    for name in SCRIPTS:
        source = (ROOT / f"{name}.py").read_text()
        assert ".savefig(" not in source and "open(" not in source, name


# --- Interruptions and signals ----------------------------------------------------------------

def test_ctrl_c_in_the_report_stops_at_once_and_keeps_the_finished_sections(
        trained_shapes_checkpoint, tmp_path, monkeypatch, capsys):
    import visualize_all

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(class_activation_maps, "prepare_method", ctrl_c)
    out = tmp_path / "report"
    code = visualize_all.main(["--checkpoint", str(trained_shapes_checkpoint), "--methods",
                               "occlusion", "cam", "feature_maps", "--out", str(out)])
    assert code == 130
    last = stderr_lines(capsys.readouterr())[-1]
    assert last.startswith("interrupted during cam:") and "run the same command again" in last
    assert list((out / "occlusion").glob("*.png"))  # finished before Ctrl-C
    assert not (out / "feature_maps").exists()  # never started
    page = (out / "index.html").read_text()
    assert "This run was interrupted" in page and "id='occlusion'" in page
    assert "id='feature_maps'" not in page
    assert json.loads((out / "summary.json").read_text())["interrupted_during"] == "cam"
    assert not list(out.rglob(".*.tmp"))


def test_ctrl_c_in_the_report_training_says_how_to_continue_and_the_rerun_resumes(
        straight_run, tmp_path, monkeypatch, capsys):
    import model.training.loop
    import visualize_all

    schedule = model.training.loop.learning_rate_at

    def ctrl_c_in_epoch_two(step, *args, **kwargs):
        if step == 256 // 64 + 2:
            raise KeyboardInterrupt
        return schedule(step, *args, **kwargs)

    checkpoint = tmp_path / "report.pt"
    argv = ["--dataset", "shapes", "--arch", "simple", "--checkpoint", str(checkpoint),
            "--epochs", "2", "--max-train-images", "256", "--methods", "occlusion",
            "--no-explorer", "--out", str(tmp_path / "report")]
    monkeypatch.setattr(model.training.loop, "learning_rate_at", ctrl_c_in_epoch_two)
    assert visualize_all.main(argv) == 130
    last = stderr_lines(capsys.readouterr())[-1]
    assert last == (f"interrupted during training: {checkpoint} keeps the last finished epoch; "
                    "run the same command again to continue it")
    assert load_checkpoint(checkpoint)["epoch"] == 1
    assert not (tmp_path / "report" / "index.html").exists()
    monkeypatch.undo()
    assert visualize_all.main(argv) == 0  # continues the training, then writes the report
    resumed, straight = load_checkpoint(checkpoint), load_checkpoint(straight_run)
    assert resumed["epoch"] == 2
    for key, value in straight["model_state"].items():  # same machine: the same arithmetic
        assert torch.equal(resumed["model_state"][key], value), key


HANG_WHILE_SAVING_EPOCH_TWO = """
import pathlib, runpy, sys, time
from model.nets import checkpoint
marker = pathlib.Path(sys.argv[1])
real_save = checkpoint.torch.save
def slow_save(data, file):
    if data["epoch"] == 2:
        file.write(b"half a checkpoint")
        marker.touch()
        time.sleep(600)
    real_save(data, file)
checkpoint.torch.save = slow_save
sys.argv = ["train_cnn.py"] + sys.argv[2:]
runpy.run_path("train_cnn.py", run_name="__main__")
"""


def test_sigterm_while_saving_cleans_up_like_ctrl_c(tmp_path):
    """A real process sent SIGTERM in the middle of writing its checkpoint."""
    out, marker = tmp_path / "run.pt", tmp_path / "saving"
    process = subprocess.Popen(
        [sys.executable, "-c", HANG_WHILE_SAVING_EPOCH_TWO, str(marker), *TRAIN_QUICK,
         "--epochs", "2", "--out", str(out)], cwd=ROOT, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True)
    try:
        wait_for_marker(process, marker, "training never reached the second save")
        process.terminate()  # SIGTERM
        code = process.wait(timeout=60)
        lines = [line for line in process.stderr.read().splitlines() if line.strip()]
    finally:
        process.kill()
        process.wait()
        process.stderr.close()
    assert code == 143
    assert lines[-1] == (f"interrupted: {out} keeps the last finished epoch; continue with "
                         "--resume (terminated by SIGTERM)")
    assert load_checkpoint(out)["epoch"] == 1
    assert [path.name for path in tmp_path.iterdir() if path.name.startswith(".")] == []


class SignalledWhileFinalized:
    """An object whose finalizer receives ``number``: Python runs the handler inside
    ``__del__``, where an exception cannot propagate."""

    def __init__(self, number):
        self.number = number

    def __del__(self):
        os.kill(os.getpid(), self.number)
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:  # the handler runs here, between two bytecodes
            pass


@pytest.mark.parametrize("work_after_s", [5.0, 0.0], ids=["still-working", "block-ends"])
@pytest.mark.parametrize("number, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_an_interruption_inside_a_finalizer_still_stops_the_command_without_a_traceback(
        number, code, work_after_s, capsys):
    """Seen under torchrun: the SIGTERM that stopped the surviving process landed in a WeakSet
    callback, and Python printed "Exception ignored in ..." with a traceback and went on. The
    interruption must stop the command all the same (raised again once the finalizer returned,
    or when the command ends first), with the one line of any interruption, and no signal may
    arrive after ``run`` returned."""
    def command(args):
        SignalledWhileFinalized(number)  # dropped at once: its __del__ runs here
        time.sleep(work_after_s)  # a signal ends the sleep (PEP 475) when its handler raises
        return []

    late = []

    def record(*_):
        late.append(number)

    # Ctrl-C's own handler raises KeyboardInterrupt; SIGTERM's default would end this process
    previous = signal.signal(number, record if number == signal.SIGTERM
                             else signal.default_int_handler)
    try:
        started = time.monotonic()
        result = model.cli.running.run(command, argparse.Namespace(debug=False))
        took = time.monotonic() - started
        signal.signal(number, record)
        time.sleep(0.3)  # longer than the delay before the signal is sent again
    finally:
        signal.signal(number, previous)
    errors = capsys.readouterr().err
    assert result == code and took < 3, errors
    assert "Exception ignored" not in errors and "Traceback" not in errors, errors
    assert [line for line in errors.splitlines() if line.strip()] == [
        "interrupted (terminated by SIGTERM)" if number == signal.SIGTERM else "interrupted"]
    assert late == []


INNER_STOPPED = "interrupted: the inner script stopped"


def inner_script(work, after_run=None):
    """A script that ``model.pipeline.scripts.run_script`` runs inside another script's command,
    as the report runs train_cnn.py: ``work`` is its command, run by ``model.cli.run``;
    ``after_run`` is called once ``run`` has returned, before ``main`` returns the exit code."""
    def main(argv, written=None, notes=None):
        code = model.cli.running.run(work, argparse.Namespace(debug=False),
                                     interrupted=lambda: INNER_STOPPED, written=written,
                                     notes=notes)
        if after_run:
            after_run()
        return code
    return types.SimpleNamespace(__name__="inner", main=main)


def ctrl_c():
    os.kill(os.getpid(), signal.SIGINT)


def working(args):
    ctrl_c()
    time.sleep(5)  # a signal ends the sleep (PEP 475) when its handler raises
    return []


def finalized_then_working(args):
    SignalledWhileFinalized(signal.SIGINT)
    time.sleep(5)
    return []


def finalized_then_done(args):
    SignalledWhileFinalized(signal.SIGINT)
    return []


def paths_read_after_the_block(interruption):
    """A command whose paths ``run`` reads after the block that handles signals, in its own
    clean-up: ``interruption`` comes while they are read."""
    def command(args):
        def paths():
            interruption()
            yield from []
        return paths()
    return command


@pytest.mark.parametrize("script, expected", [
    (inner_script(working), INNER_STOPPED),
    (inner_script(finalized_then_working), INNER_STOPPED),
    (inner_script(finalized_then_done), INNER_STOPPED),
    (inner_script(paths_read_after_the_block(ctrl_c)), INNER_STOPPED),
    # Past the inner block its finalizers report to the outer run's hook: the outer run stops.
    (inner_script(paths_read_after_the_block(lambda: SignalledWhileFinalized(signal.SIGINT))),
     "interrupted"),
    (inner_script(lambda args: [], after_run=ctrl_c), "interrupted"),
], ids=["working", "in-a-finalizer", "in-a-finalizer-as-it-ends", "in-its-clean-up",
        "in-a-finalizer-in-its-clean-up", "after-its-run"])
def test_ctrl_c_in_a_script_run_inside_another_stops_both_with_one_line(script, expected,
                                                                         capsys):
    """The report runs train_cnn.py's main in its own process (``run`` inside ``run``). Ctrl-C
    while the inner script works, in one of its finalizers (kept, then raised again), in its
    clean-up or just after its run returned must stop the outer command at once with one line:
    the inner script's own line where the inner run saw it, exit code 130, and no signal left
    for after the outer run."""
    from model.pipeline.scripts import run_script

    def report(args):
        run_script(script, [], io.StringIO())
        time.sleep(5)  # an interruption kept back and lost would let the report go on here
        return []

    late = []
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        started = time.monotonic()
        code = model.cli.running.run(report, argparse.Namespace(debug=False))
        took = time.monotonic() - started
        signal.signal(signal.SIGINT, lambda *_: late.append("SIGINT"))
        time.sleep(0.3)  # longer than the delay before a kept interruption is sent again
    finally:
        signal.signal(signal.SIGINT, previous)
    errors = capsys.readouterr().err
    assert code == 130 and took < 3, errors
    assert [line for line in errors.splitlines() if line.strip()] == [expected]
    assert late == []


def run_started_ignoring(number, command):
    """``run(command)`` in a process started with signal ``number`` ignored: (exit code, the
    signal's disposition after the run)."""
    previous = signal.signal(number, signal.SIG_IGN)
    try:
        code = model.cli.running.run(command, argparse.Namespace(debug=False))
        return code, signal.getsignal(number)
    finally:
        signal.signal(number, previous)


def test_ctrl_c_stops_a_command_started_with_ctrl_c_ignored(capsys):
    """A shell script starts ``command &`` with SIGINT ignored (POSIX: no job control there),
    and Python then ignores Ctrl-C and kill -INT (issue 41: a report started so went on to its
    end and exited 0). ``run`` stops all the same, and gives the disposition back."""
    assert run_started_ignoring(signal.SIGINT, working) == (130, signal.SIG_IGN)
    assert stderr_lines(capsys.readouterr()) == ["interrupted"]


def test_a_run_under_nohup_outlives_its_terminal(capsys):
    """nohup starts a command with SIGHUP ignored: the terminal's hang-up must not stop it
    (SIGTERM still does)."""
    def hung_up(args):
        os.kill(os.getpid(), signal.SIGHUP)
        return []

    assert run_started_ignoring(signal.SIGHUP, hung_up) == (0, signal.SIG_IGN)
    assert stderr_lines(capsys.readouterr()) == []


@pytest.mark.parametrize("started", ["as-typed", "with-&-in-a-script"])
def test_ctrl_c_during_the_reports_training_stops_the_real_process(started, tmp_path):
    """A real report sent SIGINT while its training (train_cnn.py in the same process) runs:
    exit code 130 and the one line, started as typed or with ``&`` by a shell script."""
    checkpoint = tmp_path / "ck.pt"
    command = [sys.executable, "visualize_all.py", "--checkpoint", str(checkpoint),
               "--methods", "occlusion", "--retrain", "--epochs", "3",
               "--max-train-images", "4000", "--no-explorer", "--out", str(tmp_path / "report")]
    if started == "with-&-in-a-script":  # sh prints the report's process id first
        command = ["sh", "-c", '"$@" & echo $!; wait $!', "sh", *command]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        report = int(process.stdout.readline()) if started != "as-typed" else process.pid
        # "training vgg on shapes into ...": printed as the training's run starts
        assert any(line.startswith("training ") for line in process.stdout), \
            process.stderr.read()
        time.sleep(0.5)  # inside the training, which takes seconds to make its images alone
        os.kill(report, signal.SIGINT)
        code = process.wait(timeout=60)
        errors = process.stderr.read()
    finally:
        process.kill()
        process.wait()
        process.stdout.close()
        process.stderr.close()
    lines = [line for line in re.split(r"[\r\n]", errors)
             if line.strip() and not line.startswith("report:")]  # tqdm's bar
    assert code == 130, errors
    assert lines == ["interrupted during training, before its first epoch ended: nothing was "
                     "saved"]
    assert not checkpoint.exists() and not list(tmp_path.rglob(".*.tmp"))


def test_resume_continues_with_the_stored_settings(straight_run, tmp_path, capsys):
    """--resume alone (no --epochs, --lr, --seed, ...) continues the interrupted schedule."""
    out = tmp_path / "resumed.pt"
    out.write_bytes(snapshot_path(straight_run, 1).read_bytes())
    code, lines = cli("train_cnn", ["--arch", "simple", "--resume", "--no-progress",
                                    "--out", out], capsys)
    assert code == 0, lines
    resumed, straight = load_checkpoint(out), load_checkpoint(straight_run)
    assert resumed["epoch"] == 2 and resumed["train_args"]["max_train_images"] == 256
    for key, value in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key


# --- Image files: names, orientation ----------------------------------------------------------

def test_images_with_the_same_name_in_two_folders_get_distinct_outputs(
        trained_shapes_checkpoint, tmp_path, capsys):
    colours = {"cats": (200, 30, 30), "dogs": (30, 30, 200)}
    for folder, colour in colours.items():
        (tmp_path / folder).mkdir()
        Image.new("RGB", (32, 32), colour).save(tmp_path / folder / "1.png")
    out = tmp_path / "out"
    code, lines = cli("occlusion_sensitivity", [
        "--checkpoint", trained_shapes_checkpoint, "--stride", "8", "--out", out,
        "--image", tmp_path / "cats" / "1.png", tmp_path / "dogs" / "1.png"], capsys)
    assert code == 0, lines
    assert sorted(path.name for path in out.iterdir()) == ["occlusion_cats_1.png",
                                                           "occlusion_dogs_1.png"]
    assert (out / "occlusion_cats_1.png").read_bytes() != (out / "occlusion_dogs_1.png"
                                                             ).read_bytes()


def test_image_names_are_distinct_short_and_readable(tmp_path):
    long_stem = "p" * 300
    paths = ["cats/1.jpg", "dogs/1.jpg", "a/x/2.png", "b/x/2.png", "x.png", "x.jpg",
             "same.png", "same.png", "photo.jpg", f"{long_stem}.png"]
    names = model.cli.method_inputs.image_names([tmp_path / path for path in paths])
    assert names == ["cats_1", "dogs_1", "a_x_2", "b_x_2", "x_png", "x_jpg", "same", "same_2",
                     "photo", "p" * model.cli.method_inputs.MAX_NAME_PART]


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_exif_orientation_is_applied_before_resizing(suffix, tmp_path, capsys):
    """A phone photo stored sideways: wide pixels, red left half, orientation 6 (rotate 90
    degrees clockwise to view): upright it is tall with red on top."""
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[model.data.image_files.EXIF_ORIENTATION] = 6
    path = tmp_path / f"sideways{suffix}"
    stored.save(path, exif=exif, quality=95)
    pixels = model.cli.method_inputs.load_image_file(path, DATASET_INFO["shapes"]).int()
    # (3, 32, 32)
    red_top, blue_bottom = pixels[:, 4, 16], pixels[:, 27, 16]
    assert red_top[0] > 200 and red_top[2] < 50, red_top
    assert blue_bottom[2] > 200 and blue_bottom[0] < 50, blue_bottom
    assert f"note: turned {path} upright as its EXIF orientation tag says" in \
        capsys.readouterr().err


# --- Files on shared machines and full disks --------------------------------------------------

@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_outputs_get_the_permissions_a_plain_open_would_give(umask, mode, tmp_path):
    previous = os.umask(umask)
    try:
        model.runtime.files.save_json({"a": 1}, tmp_path / "new.json")
        existing = tmp_path / "private.json"
        existing.write_text("{}")
        existing.chmod(0o600)
        model.runtime.files.save_json({"a": 2}, existing)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "new.json").stat().st_mode) == mode
    assert stat.S_IMODE(existing.stat().st_mode) == 0o600  # an existing file keeps its mode


def test_a_script_output_and_a_checkpoint_are_readable_by_others(trained_shapes_checkpoint,
                                                                 tmp_path):
    previous = os.umask(0o022)
    try:
        assert occlusion_sensitivity.main(["--checkpoint", str(trained_shapes_checkpoint),
                                           "--index", "0", "--stride", "8",
                                           "--out", str(tmp_path)]) == 0
        assert train_cnn.main(TRAIN_QUICK + ["--epochs", "1", "--max-train-images", "64",
                                             "--out", str(tmp_path / "c.pt")]) == 0
    finally:
        os.umask(previous)
    for name in ("occlusion_test_0.png", "c.pt", "c_curve.png"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name


@pytest.fixture
def full_disk(monkeypatch):
    """Every atomic write goes to /dev/full, which fails each write with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    real_mkstemp = model.runtime.files.tempfile.mkstemp

    def mkstemp(dir, prefix, suffix):
        handle, name = real_mkstemp(dir=dir, prefix=prefix, suffix=suffix)
        os.dup2(os.open("/dev/full", os.O_WRONLY), handle)
        return handle, name

    monkeypatch.setattr(model.runtime.files.tempfile, "mkstemp", mkstemp)


def test_disk_full_while_saving_a_checkpoint_says_so_and_keeps_the_old_one(
        straight_run, tmp_path, full_disk, capsys):
    out = tmp_path / "run.pt"
    out.write_bytes(snapshot_path(straight_run, 1).read_bytes())
    before = out.read_bytes()
    code, lines = cli("train_cnn", TRAIN_QUICK + ["--epochs", "2", "--resume", "--out", out],
                      capsys)
    assert_refused(code, lines, f"cannot write {out}: the disk is full",
                   f"the earlier {out} is kept as it was")
    assert out.read_bytes() == before
    assert not list(tmp_path.glob(".*.tmp"))


def test_disk_full_while_writing_a_figure(trained_shapes_checkpoint, tmp_path, full_disk,
                                          capsys):
    code, lines = cli("occlusion_sensitivity", ["--checkpoint", trained_shapes_checkpoint,
                                                "--index", "0", "--stride", "8", "--out",
                                                tmp_path], capsys)
    assert_refused(code, lines, "occlusion_test_0.png: the disk is full", "nothing was written")
    assert not list(tmp_path.iterdir())


def test_names_too_long_for_the_file_system(trained_shapes_checkpoint, tmp_path, capsys):
    limit = model.runtime.files.name_limit(tmp_path)
    too_long = tmp_path / ("c" * (limit + 1) + ".pt")
    code, lines = cli("occlusion_sensitivity", ["--checkpoint", too_long, "--out", tmp_path],
                      capsys)
    assert_refused(code, lines, "cannot use checkpoint", f"this file system allows {limit}")
    code, lines = cli("train_cnn", TRAIN_QUICK + ["--out", too_long], capsys)
    assert_refused(code, lines, "cannot use --out", f"this file system allows {limit}")
    code, lines = cli("feature_maps", ["--checkpoint", trained_shapes_checkpoint, "--out",
                                       tmp_path / ("d" * (limit + 1)) / "maps"], capsys)
    assert_refused(code, lines, "cannot use --out", f"this file system allows {limit}")
    curve_too_long = tmp_path / ("e" * (limit - 5) + ".pt")  # fits; <stem>_curve.png not
    code, lines = cli("train_cnn", TRAIN_QUICK + ["--out", curve_too_long], capsys)
    assert_refused(code, lines, "cannot use --out (its training curve)")
    assert not curve_too_long.exists()
    # Names that fit, although the hidden temporary names beside them would not.
    longest = tmp_path / ("b" * (limit - 10) + ".pt")
    code, lines = cli("train_cnn", TRAIN_QUICK + ["--epochs", "1", "--max-train-images", "64",
                                                  "--out", longest], capsys)
    assert code == 0, lines
    assert load_checkpoint(longest)["epoch"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_os_error_names_its_file_instead_of_unexpected():
    error = OSError(errno.ENAMETOOLONG, "File name too long", "x" * 300)
    assert "unexpected" not in model.cli.running.describe_error(error)
    assert "too long" in model.cli.running.describe_error(error)
    full = OSError(errno.ENOSPC, "No space left on device", "/data/out.png")
    assert model.cli.running.describe_error(full) == (
        "/data/out.png: the disk is full (No space left on device)")


def test_unreadable_checkpoint_says_permission_denied(trained_shapes_checkpoint, tmp_path,
                                                      monkeypatch, capsys):
    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(model.nets.checkpoint.torch, "load", denied)
    code, lines = cli("occlusion_sensitivity", ["--checkpoint", trained_shapes_checkpoint,
                                                "--out", tmp_path], capsys)
    assert_refused(code, lines, f"cannot read checkpoint {trained_shapes_checkpoint}",
                   "Permission denied")


# --- Options and checkpoints that used to say "unexpected" ------------------------------------

@pytest.mark.parametrize("value", ["-1", "4294967296", "99999999999"])
@pytest.mark.parametrize("script", ["train_cnn", "occlusion_sensitivity"])
def test_seed_outside_the_generators_range(script, value, trained_shapes_checkpoint, tmp_path,
                                           capsys):
    argv = (TRAIN_QUICK + ["--out", tmp_path / "x.pt"] if script == "train_cnn"
            else method_argv(script, trained_shapes_checkpoint, tmp_path))
    code, lines = cli(script, argv + ["--seed", value], capsys)
    assert_refused(code, lines, "--seed", "must be an integer from 0 to 4294967295")


def test_the_largest_seed_works(trained_shapes_checkpoint, tmp_path, capsys):
    code, lines = cli("occlusion_sensitivity", method_argv(
        "occlusion_sensitivity", trained_shapes_checkpoint, tmp_path, "--index", "0",
        "--stride", "8", "--seed", "4294967295"), capsys)
    assert code == 0, lines


@pytest.fixture(scope="module")
def vgg_checkpoint(tmp_path_factory):
    """An untrained shapes ``vgg`` checkpoint (it has a global-average-pooling layer)."""
    path = tmp_path_factory.mktemp("vgg") / "shapes_vgg.pt"
    model_args = {"arch": "vgg", "in_channels": 3, "num_classes": 6, "image_size": 32,
                  "vgg_plan": "small"}
    save_checkpoint(path, model=build_model(**model_args), model_args=model_args,
                    info=DATASET_INFO["shapes"], epoch=1, epochs=1,
                    history=[{"epoch": 1, "test_accuracy": 0.2}], train_args={})
    return path


def test_deconvnet_above_global_average_pooling(vgg_checkpoint, tmp_path, capsys):
    code, lines = cli("deconvnet", method_argv("deconvnet", vgg_checkpoint, tmp_path,
                                               "--layer", "gap"), capsys)
    assert_refused(code, lines, "layer 'gap' cannot be projected back to pixels",
                   "choose one of: conv1, bn1, relu1, pool1", "relu4")


def inconsistent_checkpoints(good, folder):
    """name -> (path, words): a dataset description that disagrees with the network."""
    cases = {}
    checkpoint = torch.load(good, weights_only=True)
    fewer_names = copy.deepcopy(checkpoint)
    fewer_names["dataset"]["classes"] = fewer_names["dataset"]["classes"][:5]
    cases["class names"] = (fewer_names, "its dataset has 5 class names, but the network has "
                                         "6 outputs")
    gray = copy.deepcopy(checkpoint)
    gray["dataset"].update(channels=1, mean=[0.5], std=[0.25])
    cases["channels"] = (gray, "its dataset has 1 channel(s), but its first conv layer takes 3")
    short_std = copy.deepcopy(checkpoint)
    short_std["dataset"]["std"] = [0.25]
    cases["normalization"] = (short_std, "1 std(s)")
    paths = {}
    for name, (data, words) in cases.items():
        paths[name] = (folder / f"{name.replace(' ', '_')}.pt", words)
        torch.save(data, paths[name][0])
    return paths


@pytest.mark.parametrize("script", SCRIPTS)
def test_checkpoint_whose_dataset_disagrees_with_its_network_is_refused(
        script, trained_shapes_checkpoint, tmp_path, capsys):
    for name, (path, words) in inconsistent_checkpoints(trained_shapes_checkpoint,
                                                        tmp_path).items():
        before = path.read_bytes()
        runs = ([TRAIN_QUICK + ["--out", path, "--resume"], TRAIN_QUICK + ["--out", path]]
                if script == "train_cnn" else [method_argv(script, path, tmp_path)])
        for argv in runs:
            code, lines = cli(script, argv, capsys)
            assert_refused(code, lines, str(path), "is inconsistent", words)
        assert path.read_bytes() == before, name


# --- Damaged or mismatched dataset files ------------------------------------------------------

def write_idx(path, array):
    """``array`` (uint8) as an IDX file, the MNIST distribution's format."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root, images=5, labels=5, label_values=None):
    """A complete small MNIST folder; the train split gets the given counts and labels."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        values = rng.integers(0, 10, size=labels) if label_values is None else label_values
        write_idx(raw / f"{prefix}-images-idx3-ubyte",
                  rng.integers(0, 256, size=(images, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.asarray(values))
    return raw


def damage(raw, case):
    """Damage the train split of a good MNIST folder; the words its error must contain."""
    images, labels = raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"
    if case == "truncated images":
        images.write_bytes(images.read_bytes()[:1000])
        return images, "is truncated"
    if case == "wrong magic":
        labels.write_bytes(b"\x00\x00\x09\x01" + labels.read_bytes()[4:])
        return labels, "is not an IDX file of unsigned bytes"
    if case == "appended bytes":
        labels.write_bytes(labels.read_bytes() + b"\x00")
        return labels, "is longer than its header declares"
    if case == "wrong image size":
        write_idx(images, np.zeros((5, 32, 32)))
        return images, "not N images of 28x28"


@pytest.mark.parametrize("case", ["truncated images", "wrong magic", "appended bytes",
                                  "wrong image size", "fewer labels", "label out of range"])
def test_damaged_mnist_files_are_named_and_never_redownloaded(case, tmp_path, monkeypatch,
                                                              capsys):
    monkeypatch.setattr(model.data.datasets, "_download",
                        lambda *args: pytest.fail("a damaged file must not trigger a download"))
    if case == "fewer labels":
        raw = write_mnist(tmp_path, images=5, labels=4)
        culprit, words = raw / "train-labels-idx1-ubyte", "has 4 labels but " \
                                                          "train-images-idx3-ubyte has 5 images"
    elif case == "label out of range":
        raw = write_mnist(tmp_path, label_values=np.array([3, 1, 12, 0, 9]))
        culprit, words = raw / "train-labels-idx1-ubyte", "label 12 at entry 2 is outside " \
                                                          "the 10 classes (0-9)"
    else:
        culprit, words = damage(write_mnist(tmp_path), case)
    code, lines = cli("train_cnn", ["--dataset", "mnist", "--arch", "simple", "--data-dir",
                                    tmp_path, "--out", tmp_path / "m.pt"], capsys)
    assert_refused(code, lines, str(culprit), words, "delete it")
    assert "unexpected" not in lines[0] and "download failed" not in lines[0]


def write_cifar(folder, labels=None, truncate=None):
    """Tiny CIFAR-10 batches in torchvision's pickle layout (2 images each)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = {"data": rng.integers(0, 256, size=(2, 3 * 32 * 32), dtype=np.uint8),
                "labels": labels or [1, 2]}
        (folder / name).write_bytes(pickle.dumps(data))
    (folder / "batches.meta").write_bytes(
        pickle.dumps({"label_names": list(DATASET_INFO["cifar10"].classes)}))
    if truncate:
        (folder / truncate).write_bytes((folder / truncate).read_bytes()[:100])


def test_damaged_cifar_file_is_named_by_its_checksum(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model.data.datasets, "_download",
                        lambda *args: pytest.fail("a damaged file must not trigger a download"))
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder)  # every file there, none with the published MD5 sum
    code, lines = cli("train_cnn", ["--dataset", "cifar10", "--data-dir", tmp_path,
                                    "--out", tmp_path / "c.pt"], capsys)
    assert_refused(code, lines, f"{folder / 'data_batch_1'} is damaged: its MD5 sum differs",
                   "and so do data_batch_2", "test_batch", "delete it")


@pytest.mark.parametrize("case", ["truncated", "label out of range"])
def test_unreadable_cifar_batches_and_bad_labels(case, tmp_path, monkeypatch, capsys):
    # Presence-only checksums, as in tests/test_datasets.py: tiny files cannot match them.
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity",
                        lambda path, md5=None: os.path.isfile(path))
    folder = tmp_path / "cifar-10-batches-py"
    if case == "truncated":
        write_cifar(folder, truncate="data_batch_3")
        words = "cannot be read"
    else:
        write_cifar(folder, labels=[4, 10])
        words = "label 10 at entry 1 is outside the 10 classes"
    code, lines = cli("train_cnn", ["--dataset", "cifar10", "--data-dir", tmp_path,
                                    "--out", tmp_path / "c.pt"], capsys)
    assert_refused(code, lines, str(folder), words)


# --- stderr stays quiet on success ------------------------------------------------------------

def test_unwritable_matplotlib_folders_and_missing_glyphs_print_nothing(
        trained_shapes_checkpoint, tmp_path):
    """A read-only home (matplotlib would warn at import) and a non-Latin file name (it would
    warn per missing glyph): stderr holds only the script's own note."""
    home = tmp_path / "home"
    home.write_text("a file where the home folder should be")
    image = tmp_path / "猫.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(image)
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("MPLCONFIGDIR", "XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    environment.update(HOME=str(home), TMPDIR=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "occlusion_sensitivity.py", "--checkpoint",
         str(trained_shapes_checkpoint), "--image", str(image), "--stride", "8", "--out",
         str(tmp_path / "out")], cwd=ROOT, env=environment, capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [f"note: resized {image} from 40x30 to 32x32"]
    assert (tmp_path / "out" / "occlusion_猫.png").is_file()


def test_only_model_plotting_imports_matplotlib():
    """matplotlib's set-up (model.figures.plotting) must run before matplotlib is first
    imported."""
    for path in [*ROOT.glob("*.py"), *(ROOT / "model").rglob("*.py")]:
        if path.name != "plotting.py":
            source = path.read_text()
            assert "import matplotlib" not in source and "from matplotlib" not in source, path


def test_a_closed_stdout_pipe_stops_quietly(tmp_path):
    """`python train_cnn.py ... | head -0`: the reader is gone before the first line."""
    process = subprocess.Popen([sys.executable, "train_cnn.py", *TRAIN_QUICK, "--epochs", "1",
                                "--out", str(tmp_path / "x.pt")], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.stdout.close()
    code = process.wait(timeout=300)
    errors = process.stderr.read()
    process.stderr.close()
    assert code == 141 and errors == "", errors


def test_an_output_that_is_a_symbolic_link_is_written_through(tmp_path):
    target = tmp_path / "big_disk" / "run.json"
    target.parent.mkdir()
    target.write_text("{}")
    link = tmp_path / "run.json"
    link.symlink_to(target)
    model.runtime.files.save_json({"epoch": 2}, link)
    assert link.is_symlink() and json.loads(target.read_text()) == {"epoch": 2}


# --- Every registered method, from the shell -------------------------------------------------

def test_every_registered_method_runs_from_the_shell_or_says_why_not(
        trained_shapes_checkpoint, tmp_path, capsys):
    """Each method of the registry is viewable with class_activation_maps.py --method and
    scored by evaluate_attributions.py --methods, with no edit beyond its registration: every
    method that applies to the simple net named in one run of each script (a run per method
    cost 3 s each, mostly the same model loading and figures), and each one that needs a
    global-average-pooling head named alone and refused."""
    usable = [method for method in METHODS if "gap-linear" not in METHODS[method].needs]
    refused = [method for method in METHODS if "gap-linear" in METHODS[method].needs]
    assert usable and refused

    def runs(methods, name):
        view = ["--checkpoint", trained_shapes_checkpoint, "--index", "0", "--gallery", "0",
                "--method", *methods, "--out", tmp_path / name / "view"]
        score = ["--checkpoint", trained_shapes_checkpoint, "--num-images", "2", "--steps",
                 "2", "--sanity-images", "1", "--methods", *methods,
                 "--out", tmp_path / name / "score"]
        return (("class_activation_maps", view), ("evaluate_attributions", score))

    for script, argv in runs(usable, "usable"):
        code, lines = cli(script, argv, capsys)
        assert code == 0, (script, lines)
    assert (tmp_path / "usable" / "view" / "cam_conv2_grid.png").is_file()
    scores = json.loads((tmp_path / "usable" / "score" / "evaluation.json").read_text())[
        "scores"]
    assert set(scores) == set(usable)
    for method in refused:  # the simple net has no GAP head
        for script, argv in runs([method], method):
            code, lines = cli(script, argv, capsys)
            assert_refused(code, lines, "global average pooling")
