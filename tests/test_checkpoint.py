import pytest
import torch

from model.data.datasets import DATASET_INFO
from model.nets.architectures import build_model
from model.nets.checkpoint import (
    CheckpointError,
    default_checkpoint_path,
    load_checkpoint,
    load_model,
    save_checkpoint,
)

MODEL_ARGS = {"arch": "vgg", "in_channels": 3, "num_classes": 6, "image_size": 32,
              "vgg_plan": "small"}
HISTORY = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.8, "test_loss": 0.4,
            "test_accuracy": 0.85, "images_per_s": 100.0, "seconds": 1.0}]


def write_checkpoint(path, model=None, model_args=MODEL_ARGS):
    model = model or build_model(**model_args)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()  # gives the optimizer state (momentum buffers) to store
    save_checkpoint(path, model=model, model_args=model_args, info=DATASET_INFO["shapes"],
                    epoch=1, epochs=3, history=HISTORY,
                    train_args={"dataset": "shapes", "out": path, "lr": 0.1},
                    optimizer=optimizer)
    return model


def test_round_trip_rebuilds_the_same_network_from_the_file_alone(tmp_path):
    path = tmp_path / "shapes_vgg.pt"
    original = write_checkpoint(path).eval()
    model, info, checkpoint = load_model(path, dataset="shapes", arch="vgg")
    state, expected = model.state_dict(), original.state_dict()
    assert state.keys() == expected.keys()
    assert all(torch.equal(state[key], expected[key]) for key in state)  # bit for bit
    # loaded for inference with channels-last conv weights (fast_model): the same sums in
    # another order, so the outputs agree to float32 rounding, not bit for bit
    assert next(model.parameters()).is_contiguous(memory_format=torch.channels_last)
    inputs = torch.randn(4, 3, 32, 32)
    assert torch.allclose(model(inputs), original(inputs), atol=1e-5, rtol=0)
    assert not model.training
    assert info == DATASET_INFO["shapes"]
    assert checkpoint["epoch"] == 1 and checkpoint["test_accuracy"] == 0.85
    assert checkpoint["train_args"]["out"] == str(path)  # paths stored as plain strings
    assert set(checkpoint["versions"]) >= {"torch", "torchvision", "python", "numpy"}
    assert checkpoint["optimizer_state"]["state"]  # momentum buffers for --resume
    # The file is plain data: the safe loader reads it.
    torch.load(path, weights_only=True)


def test_interrupted_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "shapes_vgg.pt"
    write_checkpoint(path)
    before = path.read_bytes()

    def crash_midway(obj, file):
        file.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        write_checkpoint(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    monkeypatch.undo()
    load_checkpoint(path)


@pytest.mark.parametrize("content", ["truncated", "empty", "random"])
def test_corrupt_file_is_refused(tmp_path, content):
    path = tmp_path / "bad.pt"
    write_checkpoint(path)
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "empty": b"",
                      "random": bytes(range(256)) * 10}[content])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


def test_foreign_files_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, plain)
    with pytest.raises(CheckpointError, match="not a cnn-viz checkpoint"):
        load_checkpoint(plain)
    pickled_module = tmp_path / "module.pt"
    torch.save(build_model("simple", 3, 6, 32), pickled_module)
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(pickled_module)  # weights_only refuses to unpickle code


def test_other_dataset_or_arch_is_refused(tmp_path):
    path = tmp_path / "shapes_vgg.pt"
    write_checkpoint(path)
    with pytest.raises(CheckpointError, match="dataset 'shapes', not 'mnist'"):
        load_checkpoint(path, dataset="mnist")
    with pytest.raises(CheckpointError, match="arch 'vgg', not 'simple'"):
        load_checkpoint(path, arch="simple")


def test_weights_that_do_not_fit_are_refused(tmp_path):
    path = tmp_path / "shapes_vgg.pt"
    write_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["model_args"]["num_classes"] = 10
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(path)


def test_missing_checkpoint_names_the_command_that_makes_it(tmp_path):
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(tmp_path / "none.pt", dataset="shapes", arch="vgg")
    assert "python train_cnn.py --dataset shapes --arch vgg" in str(error.value)
    assert str(default_checkpoint_path("mnist", "simple")).endswith("mnist_simple.pt")
