"""torchvision architectures (``model.nets.zoo``): building, layer names, every method, the
DeconvNet on plain and residual nets, and ``--weights``. Random weights only, never a download."""
import urllib.error

import pytest
import torch
import torch.nn as nn
import torchvision

from model.attribution import METHODS
from model.data.datasets import DATASET_INFO
from model.errors import UserError
from model.nets.architectures import build_model
from model.nets.checkpoint import model_from_weights, shape_of_weights
from model.nets.layers import block_end, conv_layer_names, first_conv
from model.nets.receptive_field import layer_receptive_field
from model.nets.zoo import SMALL_IMAGE

TORCHVISION_ARCHS = ("resnet18", "alexnet", "vgg16", "mobilenet_v2")
from model.units.mirror import (
    _project_by_gradient,
    compute_projections,
    plain_stack,
    projection_path,
)

CIFAR = DATASET_INFO["cifar10"]
LAST_BLOCK = {"resnet18": "layer4", "alexnet": "features.10", "vgg16": "features.28",
              "mobilenet_v2": "features.18"}
# Narrower layers for the method test: Score-CAM and Ablation-CAM cost a forward pass per
# channel, 1,280 of them at MobileNetV2's last block.
NARROW_BLOCK = {"resnet18": "layer2", "alexnet": "features.3", "vgg16": "features.2",
                "mobilenet_v2": "features.4"}


@pytest.fixture(scope="module")
def small_nets():
    """Each torchvision net with the small-image stem for 32 px, random weights, eval mode."""
    torch.manual_seed(0)
    return {arch: build_model(arch, 3, 10, 32).eval()
            for arch in TORCHVISION_ARCHS}


def no_hooks_left(model):
    return not any(module._forward_hooks or module._backward_hooks or
                   module._forward_pre_hooks for module in model.modules())


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
def test_torchvision_nets_take_every_dataset_and_imagenet_sizes(arch):
    for channels, size, small in ((1, 28, True), (3, 32, True), (3, 64, False)):
        model = build_model(arch, channels, 7, size).eval()
        assert (size < SMALL_IMAGE) == small
        with torch.no_grad():
            assert model(torch.randn(2, channels, size, size)).shape == (2, 7)
        assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_the_small_stem_is_the_usual_cifar_one():
    resnet = build_model("resnet18", 3, 10, 32, small_stem=True)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    # AlexNet and VGG16 keep the small stems their earlier checkpoints were trained with
    alexnet, vgg16 = (build_model(arch, 3, 10, 32) for arch in ("alexnet", "vgg16"))
    assert not any(isinstance(module, nn.Identity) for module in alexnet.modules())
    assert [name for name, module in vgg16.named_modules()
            if isinstance(module, nn.Identity)] == ["features.30"]
    # the general rule: a strided stem's pool goes, also after a deep stem's three convs
    assert isinstance(build_model("timm:resnet10t", 3, 10, 32).maxpool, nn.Identity)
    assert isinstance(build_model("densenet121", 3, 10, 32).features.pool0, nn.Identity)
    # RepVGG's stem adds a 3x3 and a 1x1 conv of the image: both at stride 1, or their maps
    # (32 and 16 px) cannot be added; at 64 px the stem stays ImageNet's
    repvgg = build_model("timm:repvgg_a0", 3, 10, 32).eval()
    assert repvgg.stem.conv_kxk.conv.stride == repvgg.stem.conv_1x1.conv.stride == (1, 1)
    assert build_model("timm:repvgg_a0", 3, 10, 64).stem.conv_1x1.conv.stride == (2, 2)
    # byobnet's first pools are its shortcuts' average pools: kept, or a block's two maps
    # (16 and 8 px) cannot be added
    byobnet = build_model("timm:test_byobnet", 3, 10, 32).eval()
    assert not any(isinstance(module, nn.Identity) for name, module in byobnet.named_modules()
                   if name.endswith("shortcut.pool"))
    with torch.no_grad():
        for net in (repvgg, byobnet):
            assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    imagenet = build_model("resnet18", 3, 1000, 224, small_stem=False)
    reference = torchvision.models.resnet18()
    assert [k for k in imagenet.state_dict()] == [k for k in reference.state_dict()]
    assert all(a.shape == b.shape for a, b in zip(imagenet.state_dict().values(),
                                                  reference.state_dict().values()))


def test_weights_tell_their_stem():
    for arch in ("resnet18", "alexnet"):
        for small in (True, False):
            state = build_model(arch, 1, 5, 32, small_stem=small).state_dict()
            assert shape_of_weights(arch, state, 224) == (1, 5, True if small else None)
    with pytest.raises(UserError, match="do not fit alexnet"):
        shape_of_weights("alexnet", build_model("resnet18", 3, 5, 32).state_dict(), 224)


def test_layer_names_follow_torchvision_and_default_to_the_last_block(small_nets):
    for arch, model in small_nets.items():
        names = conv_layer_names(model)
        assert names[-1] == LAST_BLOCK[arch], arch
        assert all(model.get_submodule(name) is not None for name in names)
    resnet = conv_layer_names(small_nets["resnet18"])
    assert resnet[:4] == ["conv1", "layer1.0", "layer1.1", "layer1"]
    # A conv inside features stands for its conv-ReLU block, as on the project's nets.
    assert block_end(small_nets["alexnet"], "features.10") == "features.11"
    assert block_end(small_nets["vgg16"], "features.0") == "features.1"
    assert block_end(small_nets["resnet18"], "layer4") == "layer4"
    assert first_conv(small_nets["resnet18"], "layer2")[0] == "layer2.0.conv1"
    with pytest.raises(UserError, match="unknown layer 'layer9'.*layer4"):
        block_end(small_nets["resnet18"], "layer9")


def test_layer_lists_of_the_example_nets(small_nets):
    assert conv_layer_names(small_nets["alexnet"]) == [f"features.{i}" for i in (0, 3, 6, 8, 10)]
    assert conv_layer_names(small_nets["mobilenet_v2"]) == [f"features.{i}" for i in range(19)]
    assert [name for name in conv_layer_names(small_nets["resnet18"]) if "." not in name] == [
        "conv1", "layer1", "layer2", "layer3", "layer4"]


def test_receptive_fields_match_the_published_ones():
    """ResNet-18 layer4: 435 px (Araujo et al. 2019, Table 1); AlexNet conv5: 163 px."""
    resnet = build_model("resnet18", 3, 1000, 224, small_stem=False)
    alexnet = build_model("alexnet", 3, 1000, 224, small_stem=False)
    assert layer_receptive_field(resnet, "layer4").size == 435
    assert layer_receptive_field(alexnet, "features.10").size == 163
    assert layer_receptive_field(alexnet, "features.0").jump == 4


@pytest.mark.parametrize("arch", TORCHVISION_ARCHS)
@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_runs_on_every_torchvision_net_and_removes_its_hooks(small_nets, arch,
                                                                           name):
    model = small_nets[arch]
    inputs, targets = torch.randn(2, 3, 32, 32), torch.tensor([1, 4])
    options = dict(info=CIFAR, batch_size=64, patch=8, stride=8, steps=4, max_channels=8)
    if name == "cam" and arch in ("alexnet", "vgg16"):
        with pytest.raises(UserError, match="global average pooling"):
            METHODS[name](model, inputs, targets, layer=LAST_BLOCK[arch], **options)
    else:
        layer = LAST_BLOCK[arch] if name == "cam" else NARROW_BLOCK[arch]
        maps = METHODS[name](model, inputs, targets, layer=layer, **options)
        assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()
    assert no_hooks_left(model)
    assert not any(getattr(m, "inplace", False) for m in model.modules())


def test_hooks_are_removed_after_an_error(small_nets):
    model = small_nets["resnet18"]
    with pytest.raises(UserError):
        METHODS["gradcam"](model, torch.randn(1, 3, 32, 32), torch.tensor([0]), layer="fc")
    with pytest.raises(UserError):
        compute_projections(model, torch.randn(1, 3, 32, 32), "layer2",
                            torch.tensor([[999]]))
    assert no_hooks_left(model)


def projections_both_ways(model, inputs, layer, channels, rule, whole_map):
    """The explicit mirror's projections and the ReLU-rule gradient's, of the same signal."""
    explicit, selected = compute_projections(model, inputs, layer, channels, rule, whole_map)
    count, chosen = channels.shape
    kept = selected if whole_map else selected * (selected.flatten(2) == selected.flatten(
        2).amax(2, keepdim=True)).view_as(selected)
    with torch.no_grad():
        activation = plain_stack_output(model, layer, inputs)
    signal = torch.zeros(count, chosen, *activation.shape[1:], dtype=inputs.dtype)
    for n in range(count):
        for j in range(chosen):
            signal[n, j, channels[n, j]] = kept[n, j]
    gradient = _project_by_gradient(model, layer, inputs, signal.flatten(0, 1), rule, 3)
    return explicit, gradient.view_as(explicit)


def plain_stack_output(model, layer, inputs):
    output = inputs
    for module in plain_stack(model, layer):
        output = module(output)
    return output


@pytest.mark.parametrize("rule", ["deconvnet", "guided", "saliency"])
def test_the_hook_path_equals_the_explicit_mirror(rule):
    """On plain stacks (the project's vgg, AlexNet's features) the vector-Jacobian product
    with the ReLU rule is the DeconvNet mirror with switches, to float64 rounding."""
    torch.manual_seed(1)
    vgg = build_model("vgg", 3, 10, 32, "wide").double().eval()
    for module in vgg.modules():  # BatchNorm with statistics, so its scale matters
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.5, 1.5)
    alexnet = build_model("alexnet", 3, 10, 64, small_stem=False).double().eval()
    for model, layer, size in ((vgg, "conv5", 32), (alexnet, "features.8", 64)):
        inputs = torch.randn(2, 3, size, size, dtype=torch.float64)
        channels = torch.tensor([[0, 3, 5], [2, 3, 7]])
        for whole_map in (False, True):
            explicit, gradient = projections_both_ways(model, inputs, layer, channels, rule,
                                                       whole_map)
            assert explicit.abs().max() > 0
            assert torch.allclose(explicit, gradient, atol=1e-10 * explicit.abs().max())
    assert projection_path(alexnet, "features.8").startswith("the explicit DeconvNet")


def test_residual_nets_project_by_the_gradient_of_the_isolated_unit(small_nets):
    """With the saliency rule a ResNet's projection of a unit is d(unit)/dx times its value:
    checked against plain autograd on the unit itself."""
    model = small_nets["resnet18"].double()
    try:
        inputs = torch.randn(1, 3, 32, 32, dtype=torch.float64)
        assert plain_stack(model, "layer2") is None
        assert "ReLU-rule gradient" in projection_path(model, "layer2")
        projections, selected = compute_projections(model, inputs, "layer2",
                                                    torch.tensor([[3]]), "saliency")
        pixels = inputs.clone().requires_grad_(True)
        with torch.enable_grad():
            unit = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(pixels)))))[0, 3]
            peak = unit.flatten().argmax()
            gradient = torch.autograd.grad(unit.flatten()[peak], pixels)[0]
        expected = gradient * selected.flatten()[peak]
        assert torch.allclose(projections[0, 0], expected[0], atol=1e-12)
    finally:
        model.float()


def save_state(tmp_path, arch, classes, **build):
    torch.manual_seed(0)
    path = tmp_path / f"{arch}.pth"
    torch.save(build_model(arch, 3, classes, 224, **build).state_dict(), path)
    return path


def test_weights_load_with_imagenet_input_and_class_names(tmp_path):
    path = save_state(tmp_path, "mobilenet_v2", 1000)
    model, info = model_from_weights("mobilenet_v2", str(path))
    assert (info.name, info.image_size, len(info.classes)) == ("imagenet", 224, 1000)
    assert info.classes[0] == "tench" and info.mean == (0.485, 0.456, 0.406)
    assert not model.training
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"kind {i}" for i in range(1000)) + "\n\n")
    assert model_from_weights("mobilenet_v2", str(path), class_names=names)[1].classes[1] == \
        "kind 1"


def test_weights_of_a_small_dataset_take_its_size_and_classes(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "cifar_resnet.pth"
    torch.save(build_model("resnet18", 3, 10, 32, small_stem=True).state_dict(), path)
    model, info = model_from_weights("resnet18", str(path), dataset="cifar10")
    assert info == CIFAR and model.conv1.kernel_size == (3, 3)


@pytest.mark.parametrize("case, message", [
    ("missing", "no such file"),
    ("garbage", "not a readable state dict"),
    ("list", "not a state dict"),
    ("other-arch", "do not fit alexnet"),
    ("unnamed", "outputs: name them with --class-names"),
    ("short-names", "has 2 names; the network has 5 outputs"),
    ("project-arch", "cnn-viz's own"),
])
def test_weights_errors_are_one_clear_line(tmp_path, case, message):
    arch, spec, names = "alexnet", str(tmp_path / "nothing.pth"), None
    if case == "garbage":
        (tmp_path / "nothing.pth").write_bytes(b"not a zip")
    elif case == "list":
        torch.save([torch.zeros(1)], spec)
    elif case == "other-arch":
        spec = str(save_state(tmp_path, "mobilenet_v2", 5))
    elif case in ("unnamed", "short-names"):
        arch, spec = "mobilenet_v2", str(save_state(tmp_path, "mobilenet_v2", 5))
        if case == "short-names":
            names = tmp_path / "names.txt"
            names.write_text("a\nb\n")
    elif case == "project-arch":
        arch = "vgg"
    with pytest.raises(UserError, match=message):
        model_from_weights(arch, spec, class_names=names)


def test_default_weights_offline_give_one_line(monkeypatch, tmp_path):
    """torchvision's own download code runs, down to the network call, which fails here."""
    def no_network(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UserError, match="could not be downloaded from https://download"
                                        ".pytorch.org/.*--weights FILE"):
        model_from_weights("resnet18", "DEFAULT")


def write_photo(path, size=(300, 200)):
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (size[1], size[0], 3), generator=generator, dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(path)
    return path


def test_images_for_imagenet_nets_are_resized_and_centre_cropped(tmp_path):
    from model.cli.method_inputs import load_image_file

    info = model_from_weights("mobilenet_v2", str(save_state(tmp_path, "mobilenet_v2", 1000)))[1]
    photo = write_photo(tmp_path / "wide.png", (300, 200))
    image = load_image_file(photo, info)
    assert image.shape == (3, 224, 224)
    from PIL import Image

    with Image.open(photo) as original:  # shorter side to 256, then the central 224
        expected = original.convert("RGB").resize((384, 256), Image.Resampling.BILINEAR)
        expected = expected.crop((80, 16, 304, 240))
    pixels = torch.frombuffer(bytearray(expected.tobytes()), dtype=torch.uint8)
    assert torch.equal(image, pixels.view(224, 224, 3).permute(2, 0, 1))


def test_method_scripts_run_on_weights_without_a_checkpoint(tmp_path, capsys):
    import class_activation_maps
    import deconvnet
    import gradient_ascent

    weights = str(save_state(tmp_path, "mobilenet_v2", 1000))
    photo = str(write_photo(tmp_path / "photo.jpg"))
    common = ["--arch", "mobilenet_v2", "--weights", weights, "--image", photo]
    assert class_activation_maps.main(common + ["--method", "gradcam", "--out",
                                                str(tmp_path / "cam")]) == 0
    assert (tmp_path / "cam" / "cam_features.18_classes_photo.png").is_file()
    assert deconvnet.main(common + ["--layer", "features.2", "features.4", "--top", "4",
                                    "--all-layers", "--out", str(tmp_path / "deconv")]) == 0
    assert (tmp_path / "deconv" / "deconvnet_photo_all_layers.png").is_file()
    captured = capsys.readouterr()
    assert "no gallery" in captured.err and "took the central 224x224" in captured.err
    # One note per way of projecting, naming its layers.
    assert captured.out.count("note: projections of") == 1
    assert "note: projections of features.2, features.4 by the ReLU-rule gradient" in captured.out
    assert gradient_ascent.main(["--arch", "mobilenet_v2", "--weights", weights, "--steps", "2",
                                 "--out", str(tmp_path / "ascent")]) == 0
    out = capsys.readouterr().out
    assert out.count("final probability") == 10 and "class tench" in out
    assert deconvnet.main(common[:4] + ["--out", str(tmp_path / "x")]) == 2  # --index: no split
    assert "no imagenet test split" in capsys.readouterr().err


def test_train_cnn_trains_a_torchvision_net_that_the_scripts_load(tmp_path):
    import occlusion_sensitivity
    import train_cnn
    from model.nets.checkpoint import load_checkpoint

    path = tmp_path / "shapes_mobilenet_v2.pt"
    assert train_cnn.main(["--dataset", "shapes", "--arch", "mobilenet_v2", "--epochs", "1",
                           "--max-train-images", "64", "--batch-size", "32", "--no-progress",
                           "--out", str(path)]) == 0
    assert load_checkpoint(path)["model_args"]["small_stem"] is True
    assert occlusion_sensitivity.main(["--checkpoint", str(path), "--index", "0", "--patch",
                                       "8", "--stride", "8", "--out",
                                       str(tmp_path / "occlusion")]) == 0
