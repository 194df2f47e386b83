"""train_cnn.py through its CLI: a short run, --resume after Ctrl-C, and bad input."""
import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import model.data.augmentation
import model.data.datasets
import model.runtime.batching
import model.runtime.calibration
import model.runtime.device
import model.training.loop
import model.training.recipes
import model.training.views
import train_cnn
from conftest import ROOT, stderr_lines
from model.errors import UserError
from model.nets.checkpoint import curve_path, load_checkpoint, load_model, snapshot_path

QUICK = ["--dataset", "shapes", "--arch", "simple", "--max-train-images", "256",
         "--batch-size", "64", "--no-progress"]


def train(tmp_path, name, *extra):
    out = tmp_path / f"{name}.pt"
    code = train_cnn.main(QUICK + ["--out", str(out), *extra])
    return code, out


def test_short_run_saves_a_checkpoint_curve_and_snapshots(tmp_path):
    code, out = train(tmp_path, "run", "--epochs", "2", "--save-every-epoch")
    assert code == 0
    model, info, checkpoint = load_model(out, dataset="shapes", arch="simple")
    assert checkpoint["epoch"] == 2 and len(checkpoint["history"]) == 2
    assert 0.0 <= checkpoint["test_accuracy"] <= 1.0
    assert checkpoint["train_args"]["epochs"] == 2 and checkpoint["train_args"]["lr"] == 0.05
    assert info.classes[0] == "circle"
    assert curve_path(out).read_bytes()[:4] == b"\x89PNG"
    for epoch in (1, 2):
        assert load_checkpoint(snapshot_path(out, epoch))["epoch"] == epoch


def test_resume_after_ctrl_c_ends_exactly_where_an_uninterrupted_run_ends(tmp_path, monkeypatch,
                                                                           capsys):
    assert train(tmp_path, "straight", "--epochs", "2")[0] == 0
    steps_per_epoch = 256 // 64
    schedule = model.training.loop.learning_rate_at

    def interrupt_mid_epoch_two(step, *args, **kwargs):
        if step == steps_per_epoch + 2:
            raise KeyboardInterrupt
        return schedule(step, *args, **kwargs)

    monkeypatch.setattr(model.training.loop, "learning_rate_at", interrupt_mid_epoch_two)
    code, out = train(tmp_path, "interrupted", "--epochs", "2")
    assert code == 130
    assert "--resume" in capsys.readouterr().err
    assert load_checkpoint(out)["epoch"] == 1  # the last good epoch, intact and loadable
    monkeypatch.undo()
    assert train(tmp_path, "interrupted", "--epochs", "2", "--resume")[0] == 0
    resumed = load_checkpoint(out)
    straight = load_checkpoint(tmp_path / "straight.pt")
    assert resumed["epoch"] == 2 and len(resumed["history"]) == 2
    for key, value in straight["model_state"].items():
        assert torch.equal(resumed["model_state"][key], value), key


def test_nan_loss_stops_without_saving(tmp_path, capsys):
    code, out = train(tmp_path, "nan", "--epochs", "1", "--lr", "1e30")
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and "loss became" in lines[0]
    assert not out.exists()


def test_same_seed_same_weights(tmp_path):
    train(tmp_path, "a", "--epochs", "1", "--seed", "5")
    train(tmp_path, "b", "--epochs", "1", "--seed", "5")
    train(tmp_path, "c", "--epochs", "1", "--seed", "6")
    weights = [load_checkpoint(tmp_path / f"{name}.pt")["model_state"]["fc.weight"]
               for name in "abc"]
    assert torch.equal(weights[0], weights[1]) and not torch.equal(weights[0], weights[2])


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "0"], "--epochs"),
    (["--batch-size", "-3"], "--batch-size"),
    (["--lr", "nan"], "--lr"),
    (["--weight-decay", "-1"], "--weight-decay"),
    (["--max-train-images", "0"], "--max-train-images"),
    (["--dataset", "imagenet"], "--dataset"),
])
def test_bad_arguments_exit_2_with_one_line(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train_cnn.main(argv)
    assert exit_info.value.code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and message in lines[0]


def test_resume_without_a_checkpoint_says_how_to_make_one(tmp_path, capsys):
    code, _ = train(tmp_path, "missing", "--resume")
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and "python train_cnn.py --dataset shapes --arch simple" in lines[0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_cuda_asked_for_but_absent(tmp_path, capsys):
    code, _ = train(tmp_path, "cuda", "--device", "cuda")
    assert code == 2
    assert len(stderr_lines(capsys.readouterr())) == 1


def test_unavailable_dataset_from_the_shell_exits_2_without_traceback(tmp_path):
    """A real process: no torchvision files and downloads refused (tested offline or not)."""
    stub = ("import sys, runpy, urllib.error, torchvision.datasets.mnist as m\n"
            "def offline(*a, **k): raise urllib.error.URLError('no network')\n"
            "m.download_and_extract_archive = offline\n"
            "sys.argv = ['train_cnn.py'] + sys.argv[1:]\n"
            "runpy.run_path('train_cnn.py', run_name='__main__')\n")
    result = subprocess.run([sys.executable, "-c", stub, "--dataset", "mnist", "--data-dir",
                             str(tmp_path), "--out", str(tmp_path / "m.pt")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--dataset shapes" in lines[0] and "Traceback" not in result.stderr


def test_out_that_is_a_folder_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "taken.pt"
    folder.mkdir()
    code = train_cnn.main(QUICK + ["--epochs", "1", "--out", str(folder)])
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and "cannot write" in lines[0]


def test_test_split_passes_build_no_autograd_graph(shapes_test_split):
    from model.data.sampling import sample_test_images
    from model.nets.architectures import build_model

    net = build_model("simple", 3, 6, 32).eval()
    grad_seen = []
    net.register_forward_hook(lambda module, inputs, output: grad_seen.append(
        torch.is_grad_enabled()))
    small = shapes_test_split.subset(64)
    model.training.views.loss_and_accuracy(net, small, "cpu")
    sample_test_images(net, small, 8, seed=0, device="cpu")
    assert grad_seen and not any(grad_seen)


def test_linear_schedule_warms_up_then_falls_to_zero():
    rates = [model.training.loop.learning_rate_at(step, 100, 0.2, 0.2, "linear")
             for step in range(100)]
    assert rates[19] == pytest.approx(0.2) and rates[0] == pytest.approx(0.01)
    assert all(a >= b for a, b in zip(rates[19:], rates[20:])) and rates[-1] < 0.003
    assert rates[60] == pytest.approx(0.2 * (1 - 40 / 80))


def test_patch_whitening_decorrelates_the_patches_it_was_fitted_on():
    """Coates & Ng 2012: the filters e_i / sqrt(lambda_i + eps) give 2x2x3 patch responses
    with covariance diag(lambda_i / (lambda_i + eps)), close to the identity."""
    from model.nets.architectures import PatchWhitening

    torch.manual_seed(0)
    mixing = torch.randn(3, 3)
    images = torch.einsum("dc,nchw->ndhw", mixing, torch.randn(64, 3, 16, 16))
    images = images + 0.5 * images.roll(1, dims=3)  # correlated neighbours, mixed colours
    stem = PatchWhitening(3)
    stem.fit(images, eps=1e-8)
    responses = stem(images)[:, :12].permute(0, 2, 3, 1).reshape(-1, 12).double()
    covariance = responses.T @ responses / len(responses)
    assert torch.allclose(covariance, torch.eye(12, dtype=torch.double), atol=1e-3)
    assert torch.equal(stem(images)[:, 12:], -stem(images)[:, :12])
    assert not stem.weight.requires_grad


def test_bfloat16_is_used_only_where_the_device_computes_it_fast(monkeypatch, tmp_path):
    """CNN_VIZ_BFLOAT16=auto measures once per CPU and keeps the verdict; on and off decide."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    calibration = model.runtime.calibration
    measured = []

    def measure(speedup):
        def measure_speedup():
            measured.append(speedup)
            return speedup
        return measure_speedup

    monkeypatch.setenv("CNN_VIZ_BFLOAT16", "auto")
    for speedup, fast in ((0.1, False), (1.7, True)):  # an AVX2 CPU, then an AVX512-BF16 one
        calibration._measured_verdict.cache_clear()
        (tmp_path / "cnn-viz" / "bfloat16.json").unlink(missing_ok=True)
        monkeypatch.setattr(calibration, "measure_speedup", measure(speedup))
        assert model.runtime.device.fast_bfloat16("cpu") is fast
        dtype = torch.bfloat16 if fast else torch.float32
        with model.runtime.device.autocast("cpu", bfloat16=True):
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == dtype
        with model.runtime.device.autocast("cpu", bfloat16=False):  # a recipe without it
            assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
        calibration._measured_verdict.cache_clear()  # a new process: the cache file answers
        assert model.runtime.device.fast_bfloat16("cpu") is fast
    assert measured == [0.1, 1.7]
    cached = json.loads((tmp_path / "cnn-viz" / "bfloat16.json").read_text())
    assert list(cached) == [calibration.cpu_key()] and cached[calibration.cpu_key()][
        "speedup"] == 1.7
    monkeypatch.setenv("CNN_VIZ_BFLOAT16", "off")
    assert not model.runtime.device.fast_bfloat16("cpu")
    monkeypatch.setenv("CNN_VIZ_BFLOAT16", "on")
    assert model.runtime.device.fast_bfloat16("cpu")
    monkeypatch.setenv("CNN_VIZ_BFLOAT16", "sometimes")
    with pytest.raises(UserError, match="CNN_VIZ_BFLOAT16"):
        model.runtime.device.fast_bfloat16("cpu")
    assert measured == [0.1, 1.7]


def test_the_bfloat16_measurement_times_both_and_stops_early_when_bfloat16_is_slow(monkeypatch):
    """float32 time / bfloat16 time of the same step: on a clock where a bfloat16 step takes
    10 and a float32 one 1, the ratio is 0.1, after one timed bfloat16 step; where bfloat16
    takes 0.5, 2.0 after three. (A clock of its own: real timings on a loaded CPU vary.)"""
    real_autocast, steps, clock = torch.autocast, [], [0.0]

    def timed_autocast(step_seconds):
        def autocast(device_type, dtype=None, enabled=True):
            steps.append(enabled)
            clock[0] += step_seconds if enabled else 1.0
            return real_autocast(device_type, dtype=dtype, enabled=enabled)
        return autocast

    monkeypatch.setattr(model.runtime.calibration.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(torch, "autocast", timed_autocast(10.0))
    assert model.runtime.calibration.measure_speedup(repeats=3) == pytest.approx(0.1)
    assert steps == [False] * 4 + [True] * 2  # warm-up + 3 float32, warm-up + 1 bfloat16
    steps.clear()
    monkeypatch.setattr(torch, "autocast", timed_autocast(0.5))
    assert model.runtime.calibration.measure_speedup(repeats=3) == pytest.approx(2.0)
    assert steps == [False] * 4 + [True] * 4


def test_the_cifar10_recipe_trains_resumes_and_explains_from_class_folders(tmp_path,
                                                                          monkeypatch, capsys):
    """The fast plan end to end on tiny CIFAR-10 class folders: frozen whitening stem fitted
    to the data, sampled tests before the last epoch, test-time views after it, resume, and
    the methods on it."""
    from test_datasets import write_cifar_folders

    import class_activation_maps
    import deconvnet

    monkeypatch.setitem(model.data.datasets.IMAGE_FOLDER_COUNTS, "cifar10",
                        {"train": 8, "test": 2})
    write_cifar_folders(tmp_path / "cifar", {"train": 8, "test": 2}, np.random.default_rng(5))
    out = tmp_path / "c.pt"
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--batch-size", "16",
            "--no-progress", "--out", str(out)]
    assert train_cnn.main(argv + ["--epochs", "1"]) == 0
    first = load_checkpoint(out)
    whitening = first["model_state"]["conv1.weight"]
    assert whitening.shape == (24, 3, 2, 2) and torch.equal(whitening[12:], -whitening[:12])
    # The resumed epochs test on 4 images, and the stem's bias trains in epoch 1 only.
    monkeypatch.setitem(model.training.recipes.RECIPES, ("cifar10", "vgg"), dataclasses.replace(
        model.training.recipes.RECIPES[("cifar10", "vgg")], epoch_test_images=4,
        stem_bias_epochs=1))
    assert train_cnn.main(argv + ["--epochs", "3", "--resume"]) == 0
    second = load_checkpoint(out)
    assert second["epoch"] == 3
    assert torch.equal(second["model_state"]["conv1.bias"], first["model_state"]["conv1.bias"])
    assert not torch.equal(second["model_state"]["conv2.weight"],
                           first["model_state"]["conv2.weight"])
    assert [row["test_images"] for row in second["history"]] == [20, 4, 20]
    assert "tta_accuracy" in second["history"][-1] and "tta_accuracy" not in second["history"][1]
    printed = capsys.readouterr().out
    assert "of 4 images" in printed and "with flip-translate views" in printed
    assert torch.equal(second["model_state"]["conv1.weight"], whitening)  # frozen
    common = ["--checkpoint", str(out), "--data-dir", str(tmp_path / "cifar"), "--index", "0",
              "--out", str(tmp_path / "figures")]
    assert class_activation_maps.main(common + ["--gallery", "0"]) == 0
    assert deconvnet.main(common + ["--layer", "conv1", "conv7", "--top", "2"]) == 0


def test_a_resume_with_another_optimizers_recipe_says_which_to_give(tmp_path, monkeypatch,
                                                                     capsys):
    """A CIFAR-10 checkpoint of the SGD recipe (the default before Muon) resumed with the
    default recipe: one line naming the recipe to give, exit code 2; with it, it resumes."""
    from test_datasets import write_cifar_folders

    monkeypatch.setitem(model.data.datasets.IMAGE_FOLDER_COUNTS, "cifar10",
                        {"train": 2, "test": 1})
    write_cifar_folders(tmp_path / "cifar", {"train": 2, "test": 1}, np.random.default_rng(6))
    argv = ["--dataset", "cifar10", "--data-dir", str(tmp_path / "cifar"), "--batch-size", "8",
            "--no-progress", "--out", str(tmp_path / "c.pt")]
    assert train_cnn.main(argv + ["--epochs", "1", "--recipe", "sgd"]) == 0
    capsys.readouterr()
    assert train_cnn.main(argv + ["--epochs", "2", "--resume", "--recipe", "default"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "--recipe sgd" in error[0] and "Traceback" not in error[0]
    assert train_cnn.main(argv + ["--epochs", "2", "--resume"]) == 0  # its stored recipe: sgd
    assert load_checkpoint(tmp_path / "c.pt")["epoch"] == 2


def test_named_recipes_choose_the_plan_and_a_resume_keeps_its_recipe():
    parse = train_cnn.get_args_parser().parse_args
    args = parse(["--dataset", "cifar10", "--recipe", "long"])
    recipe = train_cnn.apply_recipe(args)
    assert (args.vgg_plan, args.epochs, args.lr) == ("long", recipe.epochs, recipe.lr)
    assert recipe.epochs > model.training.recipes.RECIPES[("cifar10", "vgg")].epochs
    resumed = parse(["--dataset", "cifar10", "--resume"])
    assert train_cnn.apply_recipe(resumed, vars(args)).vgg_plan == "long"
    default = parse(["--dataset", "cifar10"])
    assert train_cnn.apply_recipe(default).vgg_plan == "fast" and default.recipe == "default"
    with pytest.raises(model.training.loop.UserError, match="no recipe 'long' for vgg on shapes; "
                                                     "choose from default"):
        train_cnn.apply_recipe(parse(["--dataset", "shapes", "--recipe", "long"]))


def test_cutout_zeroes_one_square_inside_each_image():
    images = torch.ones(64, 3, 10, 12)
    cut = model.data.augmentation.cutout(images, torch.Generator().manual_seed(0), 4)
    zero = (cut == 0).all(1)  # (N, H, W)
    assert torch.equal(images, torch.ones_like(images))  # the input is not changed
    assert (zero.sum((1, 2)) == 16).all() and (cut[cut != 0] == 1).all()
    rows, cols = zero.any(2), zero.any(1)  # each zero region is one 4 x 4 square
    assert (rows.sum(1) == 4).all() and (cols.sum(1) == 4).all()
    assert len({tuple(r.nonzero()[:, 0].tolist()) for r in rows}) > 1  # not one fixed place
    again = model.data.augmentation.cutout(images, torch.Generator().manual_seed(0), 4)
    assert torch.equal(cut, again)


def test_variant_batches_keep_small_images_and_cap_large_ones():
    assert model.runtime.batching.variant_batch(256, torch.zeros(1, 3, 32, 32)) == 256
    assert model.runtime.batching.variant_batch(256, torch.zeros(1, 3, 224, 224)) == 32
    assert model.runtime.batching.variant_batch(16, torch.zeros(1, 3, 224, 224)) == 16
    assert model.runtime.batching.variant_batch(256, torch.zeros(1, 3, 4000, 4000)) == 1


class _Float64(torch.nn.Module):
    """A net run in float64 on float32 inputs: top-k hits cannot flip on a near-tie."""

    def __init__(self, net):
        super().__init__()
        self.net = net.double()

    def forward(self, inputs):
        return self.net(inputs.double())


def test_top_k_accuracies_equal_a_brute_force_ranking_of_every_logit():
    torch.manual_seed(0)
    info = model.data.datasets.DatasetInfo("toy", tuple("abcdefgh"), 3, 12, (0.5,) * 3,
                                           (0.25,) * 3)
    labels = torch.tensor([1, 4, 6] * 30)  # 3 of the net's 8 classes, as a photo folder
    images = torch.randint(0, 256, (len(labels), 3, 12, 12), dtype=torch.uint8)
    dataset = model.data.datasets.ImageDataset(info, images, labels)
    net = _Float64(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                                       torch.nn.Flatten(), torch.nn.Linear(400, 8))).eval()
    scores = model.training.views.top_k_accuracies(net, dataset, "cpu", ks=(1, 5, 8))
    with torch.no_grad():
        logits = net(info.normalize(images))
    ranking = logits.argsort(1, descending=True)
    for k in (1, 5):
        expected = (ranking[:, :k] == labels[:, None]).any(1).double().mean().item()
        assert scores["top_k"][k] == pytest.approx(expected, abs=1e-12)
    assert 8 not in scores["top_k"]  # every class: always a hit, not reported
    present = torch.tensor([1, 4, 6])
    among = (present[logits[:, present].argmax(1)] == labels).double().mean().item()
    assert scores["among_classes"] == 3
    assert scores["among_accuracy"] == pytest.approx(among, abs=1e-12)
    # The three differ here, so a mix-up of them fails.
    assert len({scores["top_k"][1], scores["top_k"][5], among}) == 3, scores


def test_evaluate_only_prints_the_checkpoints_accuracy_and_trains_nothing(tmp_path, capsys):
    code, out = train(tmp_path, "run", "--epochs", "1")
    assert code == 0
    stored = load_checkpoint(out)["test_accuracy"]
    capsys.readouterr()
    before = out.stat().st_mtime_ns
    assert train_cnn.main(["--evaluate-only", "--checkpoint", str(out), "--no-progress"]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith(f"simple ({out}) on 2000 shapes test images: top-1 ")
    top1 = float(line.split("top-1 ")[1].split("%")[0])
    assert top1 == pytest.approx(100 * stored, abs=0.051)  # a near-tie may flip one image
    assert "top-5 " in line and "among" not in line  # shapes: 6 classes, every one present
    assert out.stat().st_mtime_ns == before


@pytest.mark.parametrize("argv, message", [
    (["--checkpoint", "x.pt"], "--checkpoint is for --evaluate-only"),
    (["--weights", "x.pth", "--arch", "alexnet"], "--weights is for --evaluate-only"),
    (["--evaluate-only", "--weights", "x.pth"], "--weights loads torchvision"),
    (["--evaluate-only", "--checkpoint", "missing.pt"], "missing.pt"),
])
def test_evaluation_flags_are_refused_in_one_line(argv, message, capsys, tmp_path,
                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_cnn.main(argv) == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and message in lines[0], lines
