"""The shared Gaussian blur against torchvision's, which it replaces."""
import math

import pytest
import torch
import torchvision.transforms.functional as TF

from model.attribution.blur import gaussian_blur


@pytest.mark.parametrize("sigma", [0.5, 1.0, 1.25, 3.5, 4.0])
def test_gaussian_blur_equals_torchvision(sigma):
    # float64: two passes of 1-D taps against one 2-D kernel round differently, by CPU too;
    # in float32 they are up to 7e-7 apart (sigma 4), in float64 1e-15.
    images = torch.rand(2, 3, 28, 32, generator=torch.Generator().manual_seed(0)).double()
    kernel = 2 * math.ceil(2 * sigma) + 1
    expected = TF.gaussian_blur(images, [kernel, kernel], [sigma, sigma])
    assert expected.dtype == torch.float64
    assert torch.allclose(gaussian_blur(images, sigma), expected, atol=1e-12, rtol=0)


def test_gaussian_blur_keeps_a_constant_image_and_smooths_noise():
    constant = torch.full((1, 1, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(constant, 1.0), constant)
    images = torch.rand(1, 1, 16, 16)
    assert gaussian_blur(images, 1.0).std() < images.std()
