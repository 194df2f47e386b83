"""Any CNN a user brings (``model.nets.anatomy``, ``zoo``, ``imported``): every torchvision
classification CNN's layers found from one traced pass, the smallest of each family through
every method, BatchNorm folding and the top-k scan, and a user's own module file."""
import pytest
import torch

from model.attribution import METHODS
from model.data.datasets import DatasetInfo, ImageDataset
from model.errors import UserError
from model.nets.anatomy import anatomy, trace
from model.nets.architectures import architecture_kind, build_model
from model.nets.folding import fold_batch_norm
from model.nets.layers import block_end, conv_layer_names, default_layer
from model.nets.zoo import parameters_on_meta, torchvision_archs, torchvision_input
from model.units.activation_search import search_top_activations

# The defaults an earlier class-based lookup got wrong (inside a block, or the classifier).
KNOWN_DEFAULTS = {"convnext_tiny": "features.7", "regnet_y_400mf": "trunk_output.block4",
                  "densenet121": "features.denseblock4", "squeezenet1_1": "features.12",
                  "resnet50": "layer4", "mobilenet_v2": "features.18",
                  "efficientnet_b0": "features.8", "inception_v3": "Mixed_7c"}

# The smallest member of each family (resnet18, alexnet, vgg16 and mobilenet_v2 run every
# method in tests/test_zoo.py; ResNeXt and Wide ResNet are torchvision's ResNet with wider
# Bottlenecks, 18-37 s each here, so their layers are checked on the meta device only).
FAMILIES = ("densenet121", "googlenet",
            "inception_v3", "squeezenet1_1", "shufflenet_v2_x0_5", "mnasnet0_5",
            "mobilenet_v3_small", "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf",
            "convnext_tiny")

# A user's own module: a functional ReLU, a squeeze-excitation block and a GELU module. Also
# trained on shapes and run through every script by tests/test_own_nets_scripts.py.
OWN_NET = '''
import torch
import torch.nn as nn
import torch.nn.functional as F


class SqueezeExcite(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.reduce = nn.Conv2d(channels, channels // 4, 1)
        self.expand = nn.Conv2d(channels // 4, channels, 1)

    def forward(self, x):
        scale = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(F.relu(self.reduce(scale))))


class OwnNet(nn.Module):
    def __init__(self, num_classes=10, in_channels=3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1, stride=2)
        self.se = SqueezeExcite(32)
        self.act = nn.GELU()
        self.fc = nn.Linear(32, num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.act(self.se(self.conv2(x)))
        return self.fc(x.mean((2, 3)))
'''


def test_there_are_68_torchvision_cnns_and_the_transformers_get_one_line():
    import torchvision.models as models

    assert len(torchvision_archs()) == 68
    for name in models.list_models(module=models):
        if name.startswith(("vit_", "swin_", "maxvit_")):
            with pytest.raises(UserError, match="vision transformer") as error:
                architecture_kind(name)
            assert "\n" not in str(error.value)


@pytest.mark.parametrize("arch", torchvision_archs())
def test_every_torchvision_cnn_has_layers_and_a_spatial_default_before_its_head(arch):
    size = torchvision_input(arch)[0]
    with parameters_on_meta():  # no memory, no arithmetic: shapes only
        model = build_model(arch, 3, 1000, size)
    body = trace(model, (3, size, size))
    assert body.candidates and body.main
    default = body.default
    shape = body.layers[body.run_end[default]].shape
    assert len(shape) == 3 and shape[1] * shape[2] > 1, (arch, default, shape)
    # it feeds the head: the first Linear or conv after it reads its C channels (per position
    # of a pooled map: VGG's and AlexNet's classifiers read C x 7 x 7, C x 6 x 6)
    order = list(body.layers)
    reader = next(module for module in (model.get_submodule(name) for name in
                                        order[order.index(body.run_end[default]) + 1:])
                  if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)))
    width = reader.in_features if isinstance(reader, torch.nn.Linear) else reader.in_channels
    assert width % shape[0] == 0, (arch, default, shape, reader)
    if arch in KNOWN_DEFAULTS:
        assert default == KNOWN_DEFAULTS[arch]


def tiny_info(size, classes=5):
    return DatasetInfo("tiny", tuple(str(i) for i in range(classes)), 3, size,
                       (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


def random_statistics(model, generator):
    """Random BatchNorm statistics and affine parts, so folding has something to fold."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.copy_(torch.randn(module.num_features, generator=generator,
                                                  dtype=module.running_mean.dtype) * 0.1)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator,
                                                dtype=module.running_var.dtype) + 0.5)
            module.weight.data.copy_(torch.rand(module.num_features, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(module.num_features, generator=generator) * 0.1)


@pytest.mark.parametrize("arch", FAMILIES)
def test_the_smallest_of_each_family_runs_every_method_folds_and_scans(arch):
    torch.manual_seed(0)
    size = 80 if arch == "inception_v3" else 16  # Inception v3's stem needs 75 px
    info = tiny_info(size)
    model = build_model(arch, 3, 5, size).eval()
    random_statistics(model, torch.Generator().manual_seed(1))
    inputs, targets = torch.randn(2, 3, size, size), torch.tensor([1, 4])
    default = default_layer(model)
    # the first block: few channels, so Score-CAM's and Ablation-CAM's passes stay cheap
    narrow = min(conv_layer_names(model),
                 key=lambda name: anatomy(model).layers[block_end(model, name)].shape[0])
    options = dict(info=info, batch_size=64, patch=8, stride=8, steps=2, max_channels=4)
    for name, method in METHODS.items():
        layer = default if name in ("cam", "gradcam", "gradcam++") else narrow
        try:
            maps = method(model, inputs, targets, layer=layer, **options)
        except UserError as error:  # CAM needs GAP + one Linear: said in one line
            assert name == "cam" and "global average pooling" in str(error), (name, error)
            continue
        assert maps.shape == (2, size, size) and torch.isfinite(maps).all(), (arch, name)
    assert not any(m._forward_hooks or m._backward_hooks or m._forward_pre_hooks
                   for m in model.modules())

    double = model.double()
    folded = fold_batch_norm(double)
    images = inputs.double()
    with torch.no_grad():
        assert torch.allclose(folded(images), double(images), rtol=1e-9, atol=1e-9), arch
    model.float()

    dataset = ImageDataset(info, torch.randint(0, 256, (3, 3, size, size), dtype=torch.uint8),
                           torch.tensor([0, 1, 2]))
    scan = search_top_activations(model, dataset, default, k=2, batch_size=2)
    assert torch.isfinite(scan.values).all()


def test_a_user_module_file_is_read_from_its_graph(tmp_path):
    path = tmp_path / "own_net.py"
    path.write_text(OWN_NET)
    model = build_model(f"{path}:OwnNet", 3, 4, 32).eval()
    body = anatomy(model)
    assert body.main == ["conv1", "conv2", "se"] or body.main[-1] in ("se", "act")
    assert default_layer(model) in ("se", "act", "conv2")
    assert ("", "relu") in body.functional_activations  # F.relu in OwnNet.forward
    assert "se" in body.inner_global_pools  # the squeeze pools globally inside the net
    assert body.batch_norm_pairs == [("conv1", "bn1")]
    with pytest.raises(UserError, match="has no 'Missing'; it defines"):
        build_model(f"{path}:Missing", 3, 4, 32)
