"""The explorer's precomputed data (``model.evaluation.survey``), without a browser
(tests/test_browser.py opens the page)."""
import base64

import numpy as np
import pytest
import torch

from model.attribution import METHODS
from model.attribution.maps import MAX_SIDE, normalize_maps, shrink
from model.data.datasets import load_dataset
from model.evaluation.faithfulness import explanation_map_probabilities
from model.evaluation.survey import (
    GallerySurvey,
    explorer_layers,
    explorer_maps,
    explorer_targets,
    signed_bytes,
)
from model.nets.architectures import build_model
from model.nets.layers import conv_layer_names
from model.report.explorer import explorer_data, read_explorer_data, write_explorer


def test_targets_are_the_true_class_then_the_predicted_ones_without_repeats():
    probabilities = torch.tensor([[0.1, 0.5, 0.3, 0.05, 0.05],
                                  [0.6, 0.1, 0.2, 0.06, 0.04]])
    targets = explorer_targets(torch.tensor([2, 0]), probabilities)
    assert targets.tolist() == [[2, 1, 0, 3], [0, 2, 1, 3]]
    two_classes = explorer_targets(torch.tensor([1]), torch.tensor([[0.7, 0.3]]))
    assert two_classes.tolist() == [[1, 0]]


def test_layers_are_the_default_one_in_the_middle_and_the_first():
    assert explorer_layers(["c1", "c2", "c3", "c4", "c5"]) == ["c5", "c3", "c1"]
    assert explorer_layers(["c1", "c2"]) == ["c2", "c1"]
    assert explorer_layers(["only"]) == ["only"]


def test_signed_maps_keep_zero_in_the_middle_and_their_sign():
    maps = torch.tensor([[[0.0, 2.0], [-4.0, 1.0]]])
    assert signed_bytes(maps).tolist() == [[[128, 191], [0, 159]]]
    assert signed_bytes(torch.zeros(1, 2, 2)).unique().tolist() == [128]


def test_shrinking_averages_areas_and_leaves_small_images_alone():
    values = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(shrink(values, 4), values)
    assert shrink(values, 2)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]
    assert MAX_SIDE >= 64


def test_each_stored_map_is_the_methods_own_map_for_that_image_and_target(tmp_path):
    """Two independent routes: the explorer's batched call over every (image, target) pair,
    and the registry method called on one image with one target."""
    torch.manual_seed(0)
    test_set = load_dataset("shapes", "test").subset(3)
    info = test_set.info
    model = build_model("simple", 3, len(info.classes), info.image_size).eval()
    inputs = info.normalize(test_set.images[:3])
    probabilities = torch.softmax(model(inputs), 1).detach()
    targets = explorer_targets(test_set.labels[:3], probabilities)
    layers = conv_layer_names(model)
    maps = explorer_maps(model, inputs, targets, layers, info)
    combos = [(name, layer) for name, layer, _, _ in maps]
    for name, method in METHODS.items():  # every method, the layer-taking ones at 3 layers
        expected = len(explorer_layers(layers)) if "layer" in method.needs else 1
        if "gap-linear" in method.needs:  # plain CAM needs a GAP head, which simple lacks
            expected = 0
        assert sum(combo[0] == name for combo in combos) == expected, name
        counterfactuals = expected if "counterfactual" in method.defaults else 0
        assert sum(combo[0] == f"{name}:counterfactual" for combo in combos) \
            == counterfactuals, name
    for name, layer, options in (("gradcam", layers[0], {}), ("saliency", None, {}),
                                 ("integrated-gradients", None, {}),
                                 ("layercam", layers[1], {"counterfactual": True})):
        shown = name + (":counterfactual" if options else "")
        stored, explained = next((stored, explained) for combo, at, stored, explained in maps
                                 if (combo, at) == (shown, layer))
        image, slot = 2, 1
        alone = METHODS[name](model, inputs[image:image + 1], targets[image, slot:slot + 1],
                              layer=layer, info=info, **options).detach()
        reference = (signed_bytes(alone) if METHODS[name].signed
                     else (normalize_maps(alone) * 255).round().to(torch.uint8))[0]
        # batch size changes the float sums in the last bits: at most one level of 255
        assert (stored[image, slot].int() - reference.int()).abs().max() <= 1, name
        # p(target) on the explanation image, against the evaluation's Average Drop route
        _, on_map = explanation_map_probabilities(model, inputs[image:image + 1],
                                                  targets[image, slot:slot + 1], alone, info)
        assert float(explained[image, slot]) == pytest.approx(float(on_map), abs=1e-5), name

    survey = GallerySurvey(test_set.images[:3], test_set.labels[:3], probabilities, targets,
                           maps, ["a", "b", "c"])
    data = explorer_data("simple on shapes", info, survey)
    page, script = write_explorer(tmp_path, data)
    assert page.read_text().startswith("<!DOCTYPE html>")
    written = read_explorer_data(script)
    block = np.frombuffer(base64.b64decode(written["maps"]), np.uint8)
    assert block.size == len(maps) * 3 * targets.shape[1] * 32 * 32
    first = block.reshape(len(maps), 3, targets.shape[1], 32, 32)[0]
    assert np.array_equal(first, maps[0][2].numpy())
    assert written["images"][1]["targets"] == targets[1].tolist()
    assert written["combos"][0]["explained"][2] == pytest.approx(maps[0][3][2].tolist(),
                                                                 abs=1e-4)
    assert written["methods"]["gradcam:counterfactual"]["variant"] == "counterfactual"
