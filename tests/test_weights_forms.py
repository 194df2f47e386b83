"""Weights as people have them (``model.nets.weights``): plain and wrapped state dicts, DDP and
Lightning prefixes, ``.safetensors``; each loads to the very tensors saved, and what does not
fit is one line naming the first key or shape."""
import pytest
import torch
import torch.nn as nn
from safetensors.torch import save_file

from model.errors import UserError
from model.nets.weights import fit_state_dict, load_weights, read_weights


def tiny_net(classes=3):
    """Conv, BatchNorm (with its buffers), ReLU, pooling and a classifier; random weights."""
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, classes))
    net.train()(torch.randn(2, 3, 8, 8))  # running statistics and num_batches_tracked != 0
    return net


def prefixed(state, prefix):
    return {prefix + key: value for key, value in state.items()}


FORMS = {
    "plain": lambda state: state,
    "state_dict": lambda state: {"state_dict": state, "epoch": 7, "optimizer": {"lr": 0.1}},
    "model": lambda state: {"model": state, "iter_num": 100, "config": {"n_layer": 2}},
    "model_state_dict": lambda state: {"model_state_dict": state, "epoch": 2, "loss": 0.5},
    "net": lambda state: {"net": state, "acc": 91.5},
    "nested": lambda state: {"model": {"state_dict": state}, "epoch": 1},
    "ddp": lambda state: prefixed(state, "module."),
    "lightning": lambda state: {"state_dict": prefixed(state, "model."), "epoch": 3},
    "ddp-compiled": lambda state: {"model": prefixed(state, "module._orig_mod.")},
}


def load_file_into_fresh_net(path):
    net = tiny_net()
    load_weights(net, read_weights(str(path)), f"--weights {path}")
    return net


def assert_same_tensors(net, original):
    state, expected = net.state_dict(), original.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in expected)


@pytest.mark.parametrize("form", FORMS)
def test_each_form_loads_the_saved_tensors(tmp_path, form):
    original = tiny_net()
    path = tmp_path / "weights.pt"
    torch.save(FORMS[form](original.state_dict()), path)
    assert_same_tensors(load_file_into_fresh_net(path), original)


def test_safetensors_file_loads_the_saved_tensors(tmp_path):
    original = tiny_net()
    path = tmp_path / "weights.safetensors"
    save_file(prefixed(original.state_dict(), "module."), str(path))
    assert_same_tensors(load_file_into_fresh_net(path), original)


def test_a_file_without_num_batches_tracked_loads(tmp_path):
    original = tiny_net()
    state = {key: value for key, value in original.state_dict().items()
             if not key.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "old.pt")
    net = load_file_into_fresh_net(tmp_path / "old.pt")
    assert all(torch.equal(net.state_dict()[key], value) for key, value in state.items())


def test_fitting_strips_only_what_helps_and_changes_nothing():
    state = {"module.model.0.weight": torch.ones(1), "module.model.1.bias": torch.zeros(1)}
    assert fit_state_dict(state, ["0.weight", "1.bias"]).keys() == {"0.weight", "1.bias"}
    assert fit_state_dict(state, ["model.0.weight", "model.1.bias"]).keys() == {
        "model.0.weight", "model.1.bias"}  # a net whose own keys start with "model."
    assert list(state) == ["module.model.0.weight", "module.model.1.bias"]  # not mutated


def mismatch(tmp_path, state):
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(UserError) as caught:
        load_file_into_fresh_net(tmp_path / "weights.pt")
    message = str(caught.value)
    assert "\n" not in message
    return message.split(": ", 1)[1]


def test_a_mismatch_is_one_line_naming_the_first_key_or_shape(tmp_path):
    state = tiny_net().state_dict()
    assert mismatch(tmp_path, tiny_net(classes=10).state_dict()) == \
        "'5.weight' is (10, 4) in the file, (3, 4) in the net"
    assert mismatch(tmp_path, {**state, "6.weight": torch.ones(2), "7.bias": torch.ones(2)}) == \
        "unexpected keys: '6.weight' (and 1 more)"
    del state["0.weight"], state["5.bias"]
    assert mismatch(tmp_path, {**state, "extra": torch.ones(1)}) == \
        "missing keys: '0.weight' (and 1 more); unexpected keys: 'extra'"
    with pytest.raises(UserError, match=r"^the weights do not fit Sequential: missing keys: "
                                        r"'0\.weight' \(and 1 more\)$"):
        load_weights(tiny_net(), state, "the weights")  # the caller names the weights


def read_error(path):
    with pytest.raises(UserError) as caught:
        read_weights(str(path))
    assert "\n" not in str(caught.value)
    return str(caught.value)


def test_a_cnn_viz_checkpoint_is_pointed_to_checkpoint(tmp_path):
    path = tmp_path / "run.pt"
    torch.save({"format": "cnn-viz-checkpoint", "model_state": tiny_net().state_dict()}, path)
    assert read_error(path) == \
        f"--weights {path} is a cnn-viz checkpoint; load it with --checkpoint"


def test_missing_unreadable_and_stateless_files_give_one_line(tmp_path):
    assert read_error(tmp_path / "none.pt") == f"--weights {tmp_path / 'none.pt'}: no such file"
    (tmp_path / "noise.pt").write_bytes(torch.randint(0, 256, (512,), dtype=torch.uint8,
                                                      generator=torch.Generator().manual_seed(0)
                                                      ).numpy().tobytes())
    assert "not a readable state dict saved by torch.save or safetensors (" in \
        read_error(tmp_path / "noise.pt")
    (tmp_path / "noise.safetensors").write_bytes(b"\x00" * 64)
    assert "not a readable state dict" in read_error(tmp_path / "noise.safetensors")
    torch.save({"epoch": 3, "optimizer": {}, "lr": 0.1, "a": 1, "b": 2, "c": 3},
               tmp_path / "log.pt")
    assert read_error(tmp_path / "log.pt").endswith(
        "not a state dict (a dict of tensors, as model.state_dict() gives); found a dict with "
        "keys 'epoch', 'optimizer', 'lr', 'a', 'b' (and 1 more)")
    torch.save({"model": {"epoch": 1}}, tmp_path / "inner.pt")
    assert read_error(tmp_path / "inner.pt").endswith("keys 'epoch' at ['model']")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    assert read_error(tmp_path / "list.pt").endswith("found a list")


@pytest.mark.parametrize("form", ["plain", "checkpoint", "ddp", "lightning", "safetensors"])
def test_every_form_loads_through_the_command_line(tmp_path, capsys, form):
    """--weights in each form a user has, for a torchvision net cnn-viz writes no code for;
    --layer list loads the net and lists its layers, the default marked."""
    import class_activation_maps

    torch.manual_seed(0)
    state = torchvision_state("squeezenet1_1")
    path = tmp_path / ("w.safetensors" if form == "safetensors" else "w.pt")
    if form == "safetensors":
        save_file(prefixed(state, "module."), path)
    else:
        torch.save({"plain": state, "checkpoint": {"model_state_dict": state, "epoch": 3},
                    "ddp": prefixed(state, "module."),
                    "lightning": {"state_dict": prefixed(state, "model."), "epoch": 3}}[form],
                   path)
    code = class_activation_maps.main(["--arch", "squeezenet1_1", "--weights", str(path),
                                       "--layer", "list", "--out", str(tmp_path / "out")])
    assert code == 0
    assert "features.12" in next(line for line in capsys.readouterr().out.splitlines()
                                 if line.endswith("(default)"))


def test_weights_of_another_net_give_one_line_on_the_command_line(tmp_path, capsys):
    import class_activation_maps

    path = tmp_path / "resnet.pt"
    torch.save(torchvision_state("resnet18"), path)
    code = class_activation_maps.main(["--arch", "squeezenet1_1", "--weights", str(path),
                                       "--layer", "list", "--out", str(tmp_path / "out")])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "do not fit squeezenet1_1" in lines[0]


def torchvision_state(arch):
    import torchvision

    return torchvision.models.get_model(arch, weights=None).state_dict()
