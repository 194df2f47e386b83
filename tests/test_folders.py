"""``--dataset imagefolder``: class folders read image by image (``model.data.folders``), their
preprocessing (``model.data.image_files``), training and the method scripts on them, and
``--weights`` with folder class names. Tiny generated folders at 32 px; never a download."""
import gc
import json
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import class_activation_maps
import max_activation_search
import occlusion_sensitivity
import train_cnn
import visualize_all
from conftest import stderr_lines
from model.data.batches import iterate_batches
from model.data.datasets import ImageDataset, folder_info, load_dataset
from model.data.folders import (
    FolderDataset,
    class_mapping,
    find_images,
    read_folder_split,
    split_folder,
)
from model.data.image_files import load_image_file
from model.errors import UserError
from model.nets.architectures import build_model
from model.nets.checkpoint import load_checkpoint
from model.nets.layers import conv_layer_names
from model.units.activation_search import search_top_activations

CLASSES = ("dog", "Cat", "fox")  # sorted as ImageFolder sorts them: Cat, dog, fox
SIZES = ((40, 30), (90, 70), (64, 48), (50, 80))  # (width, height)
COLOURS = {"Cat": (200, 60, 60), "dog": (60, 200, 60), "fox": (60, 60, 200)}
SIZE = 32


def write_folders(root, counts=(("train", 4), ("val", 2)), classes=CLASSES, seed=0):
    """Class folders of noisy coloured images of mixed sizes and formats under ``root``, one
    grayscale and one RGBA image among the training images. Returns ``root``."""
    rng = np.random.default_rng(seed)
    for split, count in counts:
        for number, name in enumerate(classes):
            folder = Path(root) / split / name
            folder.mkdir(parents=True)
            colour = np.array(COLOURS.get(name, (128, 128, 128)))
            for i in range(count):
                width, height = SIZES[(i + number) % len(SIZES)]
                noise = rng.integers(0, 60, (height, width, 3))
                pixels = np.clip(colour + noise - 30, 0, 255).astype(np.uint8)
                extension = ".png" if (i + number) % 2 == 0 else ".jpg"
                Image.fromarray(pixels).save(folder / f"img{i}{extension}")
    train = Path(root) / "train"
    if train.is_dir():
        gray = rng.integers(0, 256, (30, 40)).astype(np.uint8)
        Image.fromarray(gray, mode="L").save(train / classes[0] / "gray.png")
        rgba = rng.integers(0, 256, (45, 60, 4)).astype(np.uint8)
        Image.fromarray(rgba, mode="RGBA").save(train / classes[1] / "alpha.png")
    return Path(root)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return write_folders(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def train_set(folders):
    return load_dataset("imagefolder", "train", folders, image_size=SIZE, workers=0)


def train(folders, out, *extra):
    return train_cnn.main(["--dataset", "imagefolder", "--data-dir", str(folders),
                           "--image-size", str(SIZE), "--workers", "0", "--epochs", "1",
                           "--no-progress", "--out", str(out), *extra])


@pytest.fixture(scope="module")
def vgg_checkpoint(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("checkpoints") / "folders_vgg.pt"
    assert train(folders, out, "--arch", "vgg") == 0
    return out


def collect(batches):
    return [(inputs.clone(), labels.clone()) for inputs, labels in batches]


def same_batches(first, second):
    return len(first) == len(second) and all(
        torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(first, second))


def is_red(pixels):
    """(3, H, W) uint8 -> (H, W) bool: clearly red pixels."""
    r, g, b = pixels.int()
    return (r > 150) & (g < 100) & (b < 100)


def end_leftover_workers(before):
    """End the processes started since ``before`` that still run (DataLoader workers), then
    collect garbage. Returns (how many were left, thread exceptions raised meanwhile)."""
    left = [child for child in multiprocessing.active_children() if child not in before]
    for child in left:
        child.terminate()
    for child in left:
        child.join()
    errors, hook = [], threading.excepthook
    threading.excepthook = errors.append
    try:
        gc.collect()
        time.sleep(0.3)  # a queue's feeder thread fails asynchronously
    finally:
        threading.excepthook = hook
    return len(left), errors


@pytest.fixture
def no_stray_workers():
    """For tests with ``workers=2``: workers a failed iteration leaves behind (see
    test_a_worker_error_leaves_no_workers_and_no_thread_traceback) are ended after the test,
    so that collecting their loader later costs no 5 s join per worker."""
    before = set(multiprocessing.active_children())
    yield
    end_leftover_workers(before)


# 1. Which folder is a split.

def test_split_folder_prefers_val_and_names_the_folder_when_missing(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    assert split_folder(tmp_path, "train") == tmp_path / "train"
    assert split_folder(tmp_path, "test") == tmp_path / "test"
    (tmp_path / "val").mkdir()
    assert split_folder(tmp_path, "test") == tmp_path / "val"
    empty = tmp_path / "empty"
    empty.mkdir()
    for split, named in (("test", "val/"), ("train", "train/")):
        with pytest.raises(UserError) as error:
            split_folder(empty, split)
        assert str(empty) in str(error.value) and named in str(error.value)


# 2. Labels and evaluation preprocessing.

def test_labels_are_the_class_folders_and_images_are_preprocessed_as_image_files(train_set):
    info = train_set.info
    assert info.name == "imagefolder" and info.image_size == SIZE and info.channels == 3
    assert info.classes == ("Cat", "dog", "fox") == tuple(sorted(CLASSES))
    assert len(train_set) == 3 * 4 + 2 and train_set.masks is None
    for index, (path, label) in enumerate(train_set.samples):
        assert info.classes[int(train_set.labels[index])] == Path(path).parent.name
        assert label == int(train_set.labels[index])
    images = train_set.images[:]
    assert images.dtype == torch.uint8 and images.shape == (len(train_set), 3, SIZE, SIZE)
    for index, (path, _) in enumerate(train_set.samples):
        expected = load_image_file(path, info, notes=False)
        assert torch.equal(train_set.images[index], expected), path
        assert torch.equal(images[index], expected), path
    chosen = train_set.images[torch.tensor([[2, 0], [1, 3]])]
    assert chosen.shape == (2, 2, 3, SIZE, SIZE) and torch.equal(chosen[1, 0], images[1])
    names = [Path(path).name for path, _ in train_set.samples]
    gray = train_set.images[names.index("gray.png")]  # grayscale copied into R, G and B
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[0], gray[2])
    assert train_set.images[names.index("alpha.png")].shape == (3, SIZE, SIZE)


def test_small_images_are_squashed_and_large_ones_centre_cropped(tmp_path):
    """Under 64 px the whole image is resized to S x S; from 64 px the shorter side goes to
    round(S * 256 / 224) and the central S x S is kept, as ImageNet's evaluation does."""
    pixels = np.zeros((64, 128, 3), np.uint8)
    pixels[:, :, 2] = 255  # blue
    pixels[:, :32] = (255, 0, 0)  # the left quarter red
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    squashed = load_image_file(path, folder_info(tmp_path, SIZE, ("a",)), notes=False)
    assert squashed.shape == (3, SIZE, SIZE)
    red = is_red(squashed)  # the left quarter stays red: nothing was cropped
    assert red[:, :SIZE // 4 - 1].all() and not red[:, SIZE // 4 + 1:].any()
    info = folder_info(tmp_path, 64, ("a",))
    cropped = load_image_file(path, info, notes=False)
    assert cropped.shape == (3, 64, 64) and cropped.dtype == torch.uint8
    # 128 x 64 -> 146 x 73, crop from column 41: the red (columns 0-36) is gone.
    assert not is_red(cropped).any()
    assert (cropped[2].int() > 200).all()
    tall = tmp_path / "class" / "tall.png"
    tall.parent.mkdir()
    Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 0, 2))).save(tall)
    folder = FolderDataset(info, [(str(tall), 0)])
    assert torch.equal(folder.images[0], load_image_file(tall, info, notes=False))
    assert not is_red(folder.images[0]).any()  # the top quarter cropped away too


# 3. Training augmentation.

def test_augmentation_is_fixed_by_its_seed_and_the_same_with_workers(train_set,
                                                                      no_stray_workers):
    state = torch.random.get_rng_state()
    first = train_set.load(5, seed=11)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator untouched
    assert first.shape == (3, SIZE, SIZE) and first.dtype == torch.uint8
    assert torch.equal(train_set.load(5, seed=11), first)
    others = [train_set.load(5, seed=seed) for seed in range(12, 18)]
    assert not any(torch.equal(first, other) for other in others)
    assert not torch.equal(first, train_set.load(5))  # evaluation is no augmentation

    def batches(dataset, seed=0, augment=True):
        return collect(iterate_batches(dataset, 4, "cpu",
                                       torch.Generator().manual_seed(seed), augment))

    once = batches(train_set)
    assert [len(labels) for _, labels in once] == [4, 4, 4, 2]
    assert all(inputs.dtype == torch.float32 and inputs.shape[1:] == (3, SIZE, SIZE)
               for inputs, _ in once)
    assert sorted(torch.cat([labels for _, labels in once]).tolist()) == sorted(
        train_set.labels.tolist())
    assert same_batches(once, batches(train_set))
    assert not same_batches(once, batches(train_set, seed=1))
    assert not same_batches(once, batches(train_set, augment=False))
    parallel = FolderDataset(train_set.info, train_set.samples, workers=2)
    assert same_batches(once, batches(parallel))
    plain = collect(train_set.batches(5, "cpu"))
    assert same_batches(plain, collect(parallel.batches(5, "cpu")))
    assert torch.equal(plain[0][0], train_set.info.normalize(train_set.images[:5]))


def test_random_crops_cover_at_least_the_recipes_share_of_the_image(tmp_path):
    """A square photo, black left half and white right half: a crop of all of it (the least
    share 1.0) keeps both halves equal, mirrored or not; crops down to 8% do not."""
    pixels = np.zeros((64, 64, 3), dtype=np.uint8)
    pixels[:, 32:] = 255
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    Image.fromarray(pixels).save(folder / "half.png")
    dataset = load_dataset("imagefolder", "train", tmp_path, image_size=SIZE, workers=0)
    whole = [dataset.load(0, seed, min_crop_area=1.0).float().mean().item() for seed in range(20)]
    assert all(abs(mean - 127.5) < 1 for mean in whole), whole
    small = [dataset.load(0, seed).float().mean().item() for seed in range(20)]
    assert max(abs(mean - 127.5) for mean in small) > 40, small
    generator = torch.Generator().manual_seed(0)
    inputs, _ = next(iterate_batches(dataset, 1, "cpu", generator, augment=True,
                                     min_crop_area=1.0))
    assert dataset.info.denormalize(inputs).mean().item() * 255 == pytest.approx(127.5, abs=1)


# 4. Folder classes to model classes.

def test_class_mapping_by_name_then_by_position_else_an_error(tmp_path):
    model_classes = ("cat", "dog", "fox")
    assert class_mapping(["Dog", "CAT"], model_classes, "f") == [1, 0]
    assert class_mapping(["fox"], model_classes, "f") == [2]
    assert class_mapping(["a", "b", "c"], model_classes, "f") == [0, 1, 2]
    assert class_mapping(["dog", "b", "c"], model_classes, "f") == [0, 1, 2]
    with pytest.raises(UserError) as error:
        class_mapping(["dog", "wolf"], model_classes, "somewhere/val")
    assert "wolf" in str(error.value) and "somewhere/val" in str(error.value)
    assert "\n" not in str(error.value)
    # A validation split with only some of the model's classes, named in another case.
    write_folders(tmp_path, (("val", 1),), classes=("FOX", "dog"))
    info = folder_info(tmp_path, SIZE, ("cat", "dog", "fox"))
    split = read_folder_split(info, tmp_path, "test")
    assert find_images(tmp_path / "val")[0] == ["FOX", "dog"]
    assert split.labels.tolist() == [2, 1]


# 5. A broken file.

@pytest.mark.parametrize("workers", [0, 2])
def test_a_broken_image_is_one_line_naming_the_file(tmp_path, workers, no_stray_workers):
    root = write_folders(tmp_path, (("train", 2), ("val", 1)))
    broken = root / "train" / "dog" / "zz_broken.jpg"
    broken.write_bytes(b"not an image")
    dataset = load_dataset("imagefolder", "train", root, image_size=SIZE, workers=workers)
    for augment in (False, True):
        generator = torch.Generator().manual_seed(0) if augment else None
        with pytest.raises(UserError) as error:
            collect(dataset.batches(2, "cpu", generator, augment))
        message = str(error.value)
        assert len(message.strip().splitlines()) == 1, message
        assert str(broken) in message and "Traceback" not in message


def test_a_broken_image_stops_training_with_one_line(tmp_path, capsys, no_stray_workers):
    root = write_folders(tmp_path, (("train", 2), ("val", 1)))
    broken = root / "train" / "Cat" / "broken.jpg"
    broken.write_bytes(b"not an image")
    code = train_cnn.main(["--dataset", "imagefolder", "--data-dir", str(root), "--arch",
                           "simple", "--image-size", str(SIZE), "--workers", "2", "--epochs",
                           "1", "--no-progress", "--out", str(tmp_path / "b.pt")])
    assert code == 2
    captured = capsys.readouterr()
    lines = stderr_lines(captured)
    assert len(lines) == 1 and str(broken) in lines[0], captured.err
    assert "Traceback" not in captured.err and not (tmp_path / "b.pt").exists()


def test_a_worker_error_leaves_no_workers_and_no_thread_traceback(tmp_path):
    """In process (as visualize_all.py runs the scripts): after the one-line error the
    DataLoader's workers are gone, and collecting garbage later prints nothing."""
    root = write_folders(tmp_path, (("train", 2), ("val", 1)))
    (root / "train" / "fox" / "broken.png").write_bytes(b"not an image")
    before = set(multiprocessing.active_children())
    code = train_cnn.main(["--dataset", "imagefolder", "--data-dir", str(root), "--arch",
                           "simple", "--image-size", str(SIZE), "--workers", "2", "--epochs",
                           "1", "--no-progress", "--out", str(tmp_path / "b.pt")])
    left, errors = end_leftover_workers(before)
    assert code == 2
    assert left == 0
    assert not errors, [str(error.exc_value) for error in errors]


# 6. Training end to end.

def test_train_vgg_and_resnet18_on_a_folder_reproducibly(folders, vgg_checkpoint, tmp_path):
    first = load_checkpoint(vgg_checkpoint, "imagefolder", "vgg")
    assert first["dataset"]["name"] == "imagefolder"
    assert tuple(first["dataset"]["classes"]) == ("Cat", "dog", "fox")
    assert first["dataset"]["image_size"] == SIZE and first["model_args"]["num_classes"] == 3
    again = tmp_path / "again.pt"
    assert train(folders, again, "--arch", "vgg") == 0
    second = load_checkpoint(again)
    assert first["model_state"].keys() == second["model_state"].keys()
    for key, value in first["model_state"].items():
        assert torch.equal(value, second["model_state"][key]), key
    other_seed = tmp_path / "seed1.pt"
    assert train(folders, other_seed, "--arch", "vgg", "--seed", "1") == 0
    assert not all(torch.equal(value, load_checkpoint(other_seed)["model_state"][key])
                   for key, value in first["model_state"].items())
    resnet = tmp_path / "resnet.pt"
    assert train(folders, resnet, "--arch", "resnet18") == 0
    stored = load_checkpoint(resnet, "imagefolder", "resnet18")
    assert stored["dataset"]["image_size"] == SIZE
    assert tuple(stored["dataset"]["classes"]) == ("Cat", "dog", "fox")
    assert stored["model_args"]["small_stem"] is True


# 7. Method scripts on the trained checkpoint, and --image-size misuse.

def test_methods_run_on_the_folder_checkpoint(folders, vgg_checkpoint, tmp_path):
    common = ["--checkpoint", str(vgg_checkpoint), "--data-dir", str(folders), "--workers",
              "0"]
    cam_out, search_out = tmp_path / "cam", tmp_path / "search"
    assert class_activation_maps.main(common + ["--out", str(cam_out), "--index", "0", "5",
                                                "--method", "gradcam", "--gallery", "2"]) == 0
    assert max_activation_search.main(common + ["--out", str(search_out), "--k", "3",
                                                "--batch-size", "4"]) == 0
    for out in (cam_out, search_out):
        pngs = list(out.glob("*.png"))
        assert pngs and all(png.read_bytes()[:4] == b"\x89PNG" for png in pngs), out


def test_image_size_with_another_dataset_is_one_line(tmp_path, capsys):
    code = train_cnn.main(["--dataset", "shapes", "--image-size", str(SIZE), "--epochs", "1",
                           "--no-progress", "--out", str(tmp_path / "s.pt")])
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and "--image-size" in lines[0]
    assert not (tmp_path / "s.pt").exists()


# 8. --weights with folder class names.

def weights_argv(tmp_path, folders, classes=3):
    """occlusion_sensitivity.py arguments for a random small-stem resnet18 state dict with
    ``classes`` outputs on the folders at ``folders`` (a coarse 16 px patch: 9 positions)."""
    weights = tmp_path / "resnet18.pth"
    torch.manual_seed(0)
    torch.save(build_model("resnet18", 3, classes, SIZE).state_dict(), weights)
    return ["--weights", str(weights), "--arch", "resnet18", "--dataset", "imagefolder",
            "--image-size", str(SIZE), "--data-dir", str(folders), "--workers", "0",
            "--patch", "16", "--stride", "8", "--index", "0", "3"]


def test_weights_take_their_classes_from_the_folders(folders, tmp_path, capsys):
    out = tmp_path / "occlusion"
    assert occlusion_sensitivity.main(weights_argv(tmp_path, folders) + ["--out", str(out)]) == 0
    assert sorted(path.name for path in out.glob("*.png")) == ["occlusion_test_0.png",
                                                               "occlusion_test_3.png"]
    titles = capsys.readouterr().out
    assert "occlusion_test_0.png" in titles


def test_weights_with_another_class_count_than_the_folders_is_one_line(tmp_path, capsys):
    other = write_folders(tmp_path / "other", (("train", 1), ("val", 1)),
                          classes=("w", "x", "y", "z"))
    code = occlusion_sensitivity.main(weights_argv(tmp_path, other, classes=3)
                                      + ["--out", str(tmp_path / "mismatch")])
    assert code == 2
    lines = stderr_lines(capsys.readouterr())
    assert len(lines) == 1 and lines[0].startswith("error:"), lines
    assert "unexpected" not in lines[0] and "3" in lines[0] and "4" in lines[0], lines
    assert not list((tmp_path / "mismatch").glob("*.png"))


# 9. Streaming.

def test_a_folder_dataset_streams_and_scans_as_the_same_images_in_memory(train_set):
    seen = sum(len(labels) for _, labels in train_set.batches(4, "cpu"))
    assert seen == len(train_set)
    for name, value in vars(train_set).items():
        if isinstance(value, torch.Tensor):
            assert value.numel() <= train_set.labels.numel(), name
        assert not (isinstance(value, (list, tuple)) and value
                    and isinstance(value[0], torch.Tensor)), name
    assert not any(isinstance(value, torch.Tensor) for value in vars(train_set.images).values())
    torch.manual_seed(0)
    net = build_model("simple", 3, 3, SIZE).eval()
    layer = conv_layer_names(net)[-1]
    in_memory = ImageDataset(train_set.info, train_set.images[:], train_set.labels)
    streamed = search_top_activations(net, train_set, layer, k=3, batch_size=4)
    held = search_top_activations(net, in_memory, layer, k=3, batch_size=4)
    assert torch.equal(streamed.indices, held.indices)
    assert torch.equal(streamed.positions, held.positions)
    assert torch.allclose(streamed.values, held.values, rtol=1e-5, atol=1e-6)
    assert torch.allclose(streamed.channel_max, held.channel_max, rtol=1e-5, atol=1e-6)


# 10. The report with --weights on a folder.

# SqueezeNet 1.1: a torchvision net whose head is no global average pooling + Linear (a 1x1
# conv and a ReLU come between), in 1.2 M parameters. AlexNet's two 4096-wide Linear layers,
# which Score-CAM and Ablation-CAM run once per channel, made this report 18 s of the suite's
# time against 4 s. One validation image per class at 16 px and an explorer of one image (the
# small-image stem serves every size under 64 px).
REPORT_ARCH, REPORT_SIZE = "squeezenet1_1", 16


@pytest.fixture(scope="module")
def torchvision_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / f"{REPORT_ARCH}.pth"
    torch.manual_seed(0)
    torch.save(build_model(REPORT_ARCH, 3, len(CLASSES), REPORT_SIZE).state_dict(), path)
    return path


def test_report_on_weights_and_a_folder_notes_what_it_left_out(torchvision_weights, tmp_path,
                                                               capsys):
    photos = write_folders(tmp_path / "photos", (("val", 1),))
    out = tmp_path / "report"
    code = visualize_all.main(["--weights", str(torchvision_weights), "--arch", REPORT_ARCH,
                               "--dataset", "imagefolder", "--data-dir", str(photos),
                               "--image-size", str(REPORT_SIZE), "--workers", "0",
                               "--methods", "cam", "--explorer-images", "1",
                               "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["weights"] == str(torchvision_weights) and summary["checkpoint"] is None
    assert summary["dataset"] == "imagefolder" and summary["test_images"] == len(CLASSES)
    assert 0 <= summary["test_accuracy"] <= 1 and summary["epochs"] is None
    page = (out / "index.html").read_text()
    assert "not trained here, so there is no training curve" in page
    assert "training_curve.png" not in page and not (out / "training_curve.png").exists()
    # No global-average-pooling + Linear head: the CAM section says why plain CAM is absent.
    assert "Note: plain CAM left out: features.12 does not feed a global average" in page
    assert "--weights" in summary["sections"][0]["commands"][0]
    # The explorer works on torchvision nets too: SqueezeNet's layers, no plain CAM.
    data = (out / "explorer_data.js").read_text()
    assert '"layer": "features.12"' in data and '"method": "cam"' not in data


@pytest.mark.parametrize("extra, message", [
    ((), "the report needs test images: give --dataset imagefolder"),
    (("--dataset", "imagefolder", "--checkpoint", "any.pt"), "give --checkpoint or --weights"),
    (("--dataset", "imagefolder", "--retrain"), "--weights are reported on as they are"),
])
def test_report_on_weights_refuses_what_cannot_work(folders, torchvision_weights, tmp_path,
                                                    capsys, extra, message):
    code = visualize_all.main(["--weights", str(torchvision_weights), "--arch", REPORT_ARCH,
                               "--class-names", str(write_names(tmp_path)),
                               "--data-dir", str(folders), "--workers", "0",
                               "--out", str(tmp_path / "report"), *extra])
    lines = stderr_lines(capsys.readouterr())
    assert code == 2 and len(lines) == 1 and message in lines[0], lines


def write_names(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(sorted(CLASSES, key=str.lower)) + "\n")
    return path


def test_report_refuses_class_names_without_weights(tmp_path, capsys):
    code = visualize_all.main(["--class-names", str(write_names(tmp_path)),
                               "--out", str(tmp_path / "report")])
    lines = stderr_lines(capsys.readouterr())
    assert code == 2 and len(lines) == 1 and "--class-names names the outputs" in lines[0]
