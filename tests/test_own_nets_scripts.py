"""Nets a user brings, end to end: a timm CNN and an ``nn.Module`` file (a functional ReLU, a
squeeze-excitation block and a GELU; ``OWN_NET``) trained on shapes by ``train_cnn.main``,
then every method script on each checkpoint with cheap options (code 0 and a PNG),
``--layer list`` marking the default layer, and the checkpoint rebuilding the same net from
another folder. Each net is trained once per module (64 images, one epoch: a few seconds)."""
from collections import namedtuple

import pytest
import torch
import torch.nn.functional as F

import class_activation_maps
import deconvnet
import evaluate_attributions
import feature_maps
import gradient_ascent
import max_activation_search
import occlusion_sensitivity
import train_cnn
from model.nets.checkpoint import load_model
from model.nets.layers import default_layer
from test_any_net import OWN_NET

Trained = namedtuple("Trained", "name arch checkpoint folder layer default")

# --arch as typed (the file spec relative to the folder training runs in), an early layer for
# the scripts that study one (a small layer keeps wide figures out), and the default layer:
# the last spatial map before the global pooling. timm's test_resnet is its ResNet code (a deep
# stem, average-pool shortcuts) at 86 MFLOP an image at 32 px; resnet10t, 557 MFLOP, cost this
# module 36 s of the suite's time against 21 s, most of it in passes over the 2000 test images.
NETS = {"timm": ("timm:test_resnet", "layer1", "layer4"),
        "own": ("own_net.py:OwnNet", "se", "se")}

LAYER = object()  # stands for the net's early layer in the options below

# Each script's cheapest run that still draws: one or two test images, few steps, few methods.
SCRIPTS = {
    occlusion_sensitivity: ["--index", "0", "1", "--patch", "8", "--stride", "8"],
    class_activation_maps: ["--index", "0", "--gallery", "0", "--max-channels", "4"],  # family
    deconvnet: ["--index", "0", "--layer", LAYER, "--top", "2"],
    feature_maps: ["--index", "0", "--show", "maps", "dead", "--layers", LAYER,
                   "--num-images", "8"],
    max_activation_search: ["--layer", LAYER, "--k", "2", "--channels", "0-1"],
    gradient_ascent: ["--steps", "4", "--classes", "0", "1"],
    evaluate_attributions: ["--num-images", "2", "--sanity-images", "2", "--steps", "4",
                            "--methods", "gradcam", "saliency", "occlusion",
                            "--occlusion-stride", "8"],
}

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module", params=sorted(NETS))
def trained(request, tmp_path_factory):
    """The net trained for one epoch on 64 shapes images, from inside its own folder."""
    arch, layer, default = NETS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    (folder / "own_net.py").write_text(OWN_NET)
    checkpoint = folder / "ck.pt"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        code = train_cnn.main(["--dataset", "shapes", "--arch", arch, "--epochs", "1",
                               "--max-train-images", "64", "--batch-size", "32", "--no-progress",
                               "--data-dir", str(folder), "--out", str(checkpoint)])
    assert code == 0
    return Trained(request.param, arch, checkpoint, folder, layer, default)


def test_the_checkpoint_rebuilds_the_same_net_from_another_folder(trained, tmp_path,
                                                                   monkeypatch,
                                                                   shapes_test_split):
    monkeypatch.chdir(tmp_path)  # own_net.py is not here: the stored spec must not be relative
    model, info, checkpoint = load_model(trained.checkpoint, dataset="shapes")
    if trained.name == "own":
        assert checkpoint["arch"] == f"{trained.folder / 'own_net.py'}:OwnNet"
        assert type(model).__name__ == "OwnNet"
    else:
        assert checkpoint["arch"] == trained.arch
    state = model.state_dict()
    assert state.keys() == checkpoint["model_state"].keys()
    assert all(torch.equal(state[key], value) for key, value in checkpoint["model_state"].items())
    # parameterless parts too (a stem's max pool kept or removed): the test loss training
    # measured, recomputed (it differs by 1e-7 relative between batch sizes 64 and 1000)
    with torch.no_grad():
        logits = torch.cat([model(info.normalize(shapes_test_split.images[start:start + 500]))
                            for start in range(0, len(shapes_test_split), 500)])
    loss = F.cross_entropy(logits, shapes_test_split.labels).item()
    assert loss == pytest.approx(checkpoint["history"][-1]["test_loss"], rel=1e-5)


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda script: script.__name__)
def test_every_method_script_runs_on_the_trained_net_and_draws(trained, script, tmp_path):
    out = tmp_path / "out"
    options = [trained.layer if option is LAYER else option for option in SCRIPTS[script]]
    code = script.main(["--checkpoint", str(trained.checkpoint), "--out", str(out), *options])
    assert code == 0
    pngs = sorted(out.rglob("*.png"))
    assert pngs, f"{script.__name__} wrote no PNG into {out}"
    assert all(path.read_bytes()[:8] == PNG for path in pngs)


def test_layer_list_marks_the_default_layer(trained, tmp_path, capsys):
    out = tmp_path / "out"
    code = class_activation_maps.main(["--checkpoint", str(trained.checkpoint), "--out",
                                       str(out), "--layer", "list"])
    assert code == 0
    marked = [line for line in capsys.readouterr().out.splitlines()
              if line.endswith(" (default)")]
    assert len(marked) == 1 and marked[0].split()[0] == trained.default
    assert default_layer(load_model(trained.checkpoint)[0]) == trained.default
    assert not list(out.rglob("*.png"))  # listed, nothing drawn
