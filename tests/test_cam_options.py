"""The CAM family's options (model.attribution.cam, model.attribution.test_time): eigen_smooth
against a second formulation of the principal component, counterfactual maps by an identity of
the gradient, aug_smooth against explicit flips and an equivariant map, and the registry's
``name:option`` variants."""
import pytest
import torch

from model.attribution import (
    METHODS,
    cam as cams,
    test_time,  # its function is not collected as a test
)
from model.attribution.maps import normalize_maps, resize_maps
from model.attribution.registry import method_variant
from model.data.datasets import DATASET_INFO
from model.errors import UserError
from model.evaluation import survey
from test_cam import vgg_with_statistics

GRADIENT_CAMS = sorted(cams.GRADIENT_METHODS)
INFO = DATASET_INFO["shapes"]


def principal_projection_by_covariance(terms):
    """A second formulation of eigen_smooth's projection: the top eigenvector of the
    positions' covariance matrix (torch.linalg.eigh, not an SVD), one image at a time."""
    maps = []
    for image in terms:
        rows = image.flatten(1).T  # (hw, K)
        centered = rows - rows.mean(0)
        _, vectors = torch.linalg.eigh(centered.T @ centered)
        projection = centered @ vectors[:, -1]
        reference = image.sum(0).flatten()
        if (projection * (reference - reference.mean())).sum() < 0:
            projection = -projection
        maps.append(projection.clamp_min(0).view(image.shape[1:]))
    return torch.stack(maps)


def test_eigen_smooth_projects_the_weighted_activations_on_their_first_component():
    """Grad-CAM with eigen_smooth = ReLU(first principal component of w_k A_k), not their sum
    (pytorch-grad-cam's get_2d_projection on the weighted activations)."""
    model = vgg_with_statistics(2).double()
    inputs, targets = torch.randn(3, 3, 16, 16).double(), torch.tensor([0, 2, 5])
    activations, gradients, _ = cams.activations_and_gradients(model, "conv3", inputs, targets)
    terms = gradients.mean((2, 3))[:, :, None, None] * activations
    expected = resize_maps(principal_projection_by_covariance(terms), 16)
    smoothed = METHODS["gradcam"](model, inputs, targets, layer="conv3", eigen_smooth=True)
    plain = METHODS["gradcam"](model, inputs, targets, layer="conv3")
    assert torch.allclose(smoothed, expected, atol=1e-10)
    assert not torch.allclose(smoothed, plain, atol=1e-3)


def test_eigen_smooth_of_rank_one_terms_is_the_centred_map():
    """Terms T_k = a_k u (one spatial pattern) have u - mean(u) as their only component: the
    projection is |a| (u - mean u), signed towards the sum."""
    pattern = torch.randn(1, 1, 5, 5).double()
    scales = torch.tensor([0.5, -2.0, 2.5]).double()[None, :, None, None]
    projection = cams.combine_terms(scales * pattern, eigen_smooth=True)
    centred = (pattern - pattern.mean())[0, 0] * scales.sum().sign()
    assert torch.allclose(projection[0], scales.norm() * centred.clamp_min(0), atol=1e-12)


@pytest.mark.parametrize("method", GRADIENT_CAMS)
def test_a_counterfactual_map_is_the_map_of_the_negated_class(method):
    """Selvaraju et al. 2017, sec. 3: counterfactual maps use d(-y^c)/dA. On a net whose class 1
    scores y^1 = -y^0 (the last Linear's rows negated), every gradient method's counterfactual
    map of class 0 is its ordinary map of class 1."""
    model = vgg_with_statistics(7).double()  # both classes' maps are nonzero on every image
    with torch.no_grad():
        model.fc.weight[1] = -model.fc.weight[0]
        model.fc.bias[1] = -model.fc.bias[0]
    inputs = torch.randn(4, 3, 16, 16, generator=torch.Generator().manual_seed(0)).double()
    zeros, ones = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    counterfactual = METHODS[method](model, inputs, zeros, layer="conv3", counterfactual=True)
    negated = METHODS[method](model, inputs, ones, layer="conv3")
    ordinary = METHODS[method](model, inputs, zeros, layer="conv3")
    assert (negated.flatten(1).amax(1) > 0).all()
    assert torch.allclose(counterfactual, negated, rtol=1e-9, atol=0)
    assert not torch.allclose(counterfactual, ordinary, rtol=1e-3, atol=0)


def test_counterfactual_is_refused_where_there_is_no_gradient():
    model = vgg_with_statistics(4)
    with pytest.raises(UserError, match="counterfactual"):
        METHODS["scorecam"](model, torch.randn(1, 3, 16, 16), torch.tensor([0]),
                            layer="conv4", counterfactual=True)


def test_aug_smooth_with_flips_alone_is_the_mean_of_the_map_and_its_mirrored_copy():
    """flips=(False, True), scales=(1,): (M(x) + flip(M(flip x))) / 2, with torch.flip."""
    model = vgg_with_statistics(5).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([1, 3])

    def gradcam(images, classes):
        return METHODS["gradcam"](model, images, classes, layer="conv3")

    expected = (gradcam(inputs, targets)
                + gradcam(inputs.flip(-1), targets).flip(-1)) / 2
    smoothed = test_time.test_time_augmented(gradcam, inputs, targets, scales=(1.0,))
    assert torch.allclose(smoothed, expected, atol=1e-12)


def test_aug_smooth_brings_each_copy_back_to_the_image():
    """A "map" that is the image itself (any equivariant map) comes back as the image: every
    copy's map is warped back where its content came from. A smooth blob keeps the two
    bilinear resamplings' error small: 0.017 measured here; with the copies not brought back,
    or brought back by the forward transform, it is 0.054 and more."""
    grid = torch.linspace(-1, 1, 32).double()
    blob = torch.exp(-((grid[None, :] - 0.3) ** 2 + (grid[:, None] + 0.2) ** 2) / 0.15)
    images = blob[None, None].repeat(2, 1, 1, 1)

    def image_itself(copies, classes):
        return copies[:, 0]

    smoothed = test_time.test_time_augmented(image_itself, images, torch.tensor([0, 1]))
    assert (smoothed - blob).abs().max() < 0.03
    forward, inverse = test_time.view_transforms()
    copies = test_time.warp(images[:1].repeat(len(forward), 1, 1, 1), forward)
    wrong = test_time.warp(copies, forward)
    assert (wrong.mean(0)[0] - blob).abs().max() > 0.04  # the test can tell


@pytest.mark.parametrize("method", ["scorecam", "ablationcam", "gradcam"])
def test_aug_smooth_gives_each_target_its_own_map(method):
    """Several targets per image under aug_smooth: the same maps as one target at a time."""
    model = vgg_with_statistics(6).double()
    inputs, targets = torch.randn(2, 3, 16, 16).double(), torch.tensor([[0, 4], [2, 1]])
    options = dict(layer="conv4", batch_size=7, aug_smooth=True)
    several = METHODS[method](model, inputs, targets, **options)
    for slot in range(2):
        one = METHODS[method](model, inputs, targets[:, slot], **options)
        assert torch.allclose(several[:, slot], one, atol=1e-10)


def test_method_variants_switch_options_on_or_say_which_exist():
    method, options = method_variant("gradcam++:aug-smooth:counterfactual")
    assert method.name == "gradcam++" and options == {"aug_smooth": True, "counterfactual": True}
    assert method_variant("scorecam:eigen-smooth")[1] == {"eigen_smooth": True}
    with pytest.raises(UserError, match="counterfactual"):
        method_variant("scorecam:counterfactual")  # no gradient: no such option
    with pytest.raises(UserError, match="unknown method"):
        method_variant("nocam:aug-smooth")


def test_the_explorer_smooths_the_cam_methods_alone():
    """explorer_maps(options={"aug_smooth": True}): the CAM methods' stored maps are their
    aug-smoothed maps (and so are their counterfactual ones); occlusion and saliency are left
    as they are. Occlusion comes first, as in the registry: its own options must not replace
    the ones asked for."""
    model = vgg_with_statistics(8)
    inputs, targets = torch.randn(2, 3, 16, 16), torch.tensor([[0, 1], [2, 3]])
    chosen = {name: METHODS[name] for name in ("occlusion", "gradcam", "saliency")}
    original = survey.METHODS
    survey.METHODS = chosen
    try:
        maps = survey.explorer_maps(model, inputs, targets, ["conv4"], INFO,
                                    options={"aug_smooth": True})
    finally:
        survey.METHODS = original
    stored = {name: (bytes_, explained) for name, _, bytes_, explained in maps}
    assert set(stored) == {"occlusion", "gradcam", "gradcam:counterfactual", "saliency"}
    for name, options in (("gradcam", {"aug_smooth": True}), ("saliency", {}),
                          ("gradcam:counterfactual", {"aug_smooth": True,
                                                      "counterfactual": True})):
        method = METHODS[name.split(":")[0]]
        expected = method(model, inputs, targets, layer="conv4", info=INFO, **options)
        expected = survey.to_bytes(normalize_maps(expected.flatten(0, 1).detach()))
        assert (stored[name][0].flatten(0, 1).int() - expected.int()).abs().max() <= 1, name


def test_grid_columns_name_the_smoothing_each_map_had():
    import class_activation_maps as script

    assert script.column_title("gradcam:counterfactual", ["aug-smooth", "eigen-smooth"]) == \
        "gradcam:counterfactual\naug-smooth\neigen-smooth"
    assert script.column_title("saliency", ["aug-smooth"]) == "saliency"  # not a CAM method
