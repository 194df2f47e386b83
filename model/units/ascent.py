"""Gradient ascent on the input: the image a class or a channel responds to most.

Class model visualization (Simonyan et al. 2014, sec. 2, Eq. 1): from a zero (or small-noise)
image, maximize S_c(I) - lambda ||I||^2, with S_c the class score before the softmax and I the
normalized input. Filter maximization (Erhan et al. 2009) maximizes the mean activation of a
channel instead (its centre unit, with ``neuron``). All classes or channels are optimized
together as one batch (every image is its own problem: BatchNorm runs in eval mode).

Regularizers (:class:`Regularizers`), each switchable: L2 decay, a random jitter of the image
each step, a Gaussian blur every few steps (Yosinski et al. 2015), clipping to the dataset's
valid pixel range, total variation (Mahendran & Vedaldi 2015), and random zoom and rotation
(transformation robustness, Olah et al. 2017). ``param="fft"`` optimizes a 1/f-scaled Fourier
spectrum with decorrelated colour instead of pixels (:class:`FourierImage`, Olah et al. 2017).
``gradient_ascent.py`` draws the results.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from model.attribution.blur import gaussian_blur
from model.nets.layers import as_feature_maps, block_end, layer_output

# Colour correlation of natural images (the square root of their RGB covariance), as used by
# Olah et al. 2017; optimizing in this decorrelated basis spreads changes across channels.
COLOR_CORRELATION = torch.tensor([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05],
                                  [0.27, -0.09, 0.03]])


@dataclass(frozen=True)
class Regularizers:
    """Settings of the ascent; each regularizer is off at 0 (or False)."""

    l2: float = 1e-3
    jitter: int = 2
    blur_every: int = 4
    blur_sigma: float = 0.5
    tv: float = 0.0
    clip: bool = True
    scale: float = 0.0  # random zoom by a factor in [1 - scale, 1 + scale] each step
    rotate: float = 0.0  # random rotation by up to this many degrees each step


NO_REGULARIZATION = Regularizers(l2=0.0, jitter=0, blur_every=0, tv=0.0, clip=True)


INIT_STD = {"zero": 0.0, "noise": 0.01, "random": 0.5}  # in normalized input units

MAX_DEFAULT_CLASSES = 10  # class images gradient_ascent.py draws when --classes is not given


def _random_start(shape, init, generator):
    """The start tensor; "zero" draws nothing, so later draws (jitter) do not depend on N."""
    if INIT_STD[init] == 0:
        return torch.zeros(shape)
    return INIT_STD[init] * torch.randn(shape, generator=generator)


class PixelImage:
    """Direct parameterization: the normalized image itself, clipped to the valid range."""

    def __init__(self, count, info, init, generator, device, dtype=torch.float32):
        shape = (count, info.channels, info.image_size, info.image_size)
        start = _random_start(shape, init, generator)
        self.low = info.normalize(torch.zeros(1, info.channels, 1, 1, device=device, dtype=dtype))
        self.high = info.normalize(torch.ones(1, info.channels, 1, 1, device=device, dtype=dtype))
        # "zero" is the zero of the normalized input, the dataset's mean image.
        self.parameters = [start.to(device, dtype).requires_grad_(True)]

    def image(self):
        """The normalized (N, C, H, W) input."""
        return self.parameters[0]

    @torch.no_grad()
    def clip(self):
        self.parameters[0].copy_(torch.maximum(torch.minimum(self.parameters[0], self.high),
                                               self.low))

    @torch.no_grad()
    def blur(self, sigma):
        self.parameters[0].copy_(gaussian_blur(self.parameters[0], sigma))


# The Fourier image's spectrum falls as 1 / f^FOURIER_DECAY. Lucid (Olah et al. 2017's code)
# uses 1; on the trained ImageNet MobileNetV2 at 224 px that left class models of
# high-frequency texture (tench, golf ball: p = 1.000 either way), and 1.5 shows the fish and
# the balls (docs/methods.md, "Class models on a trained ImageNet net").
FOURIER_DECAY = 1.5
FOURIER_DIVISOR = 4.0  # lucid's "magic" 4: the spectrum's image divided by it before the sigmoid


class FourierImage:
    """Olah et al. 2017: a Fourier spectrum scaled by 1/f^decay (times the side, so that the
    lowest frequency keeps scale 1 for any decay), colours decorrelated, a sigmoid keeping
    pixels in (0, 1). Blur and clipping are unnecessary and do nothing."""

    def __init__(self, count, info, init, generator, device, dtype=torch.float32,
                 decay=FOURIER_DECAY):
        size = info.image_size
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        frequency = torch.sqrt(fx ** 2 + fy ** 2)
        floor = torch.tensor(1.0 / size)  # the constant term gets the lowest frequency's scale
        scale = (floor / torch.maximum(frequency, floor)) ** decay * size / FOURIER_DIVISOR
        self.scale = scale.to(device, dtype)
        shape = (count, info.channels, size, size // 2 + 1, 2)
        # A zero spectrum is a mid-gray image.
        spectrum = _random_start(shape, init, generator)
        self.parameters = [spectrum.to(device, dtype).requires_grad_(True)]
        self.info, self.size = info, size

    def image(self):
        spectrum = torch.view_as_complex(self.parameters[0]) * self.scale
        decorrelated = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho")
        if self.info.channels == 3:
            matrix = COLOR_CORRELATION / COLOR_CORRELATION.norm(dim=0).max()
            decorrelated = torch.einsum("ij,njhw->nihw", matrix.to(decorrelated), decorrelated)
        return self.info.normalize(torch.sigmoid(decorrelated))

    def clip(self):
        pass

    def blur(self, sigma):
        pass


def random_zoom_rotate(images, scale, degrees, generator):
    """``images`` zoomed by a random factor in [1 - scale, 1 + scale] and rotated by a random
    angle in [-degrees, degrees] (:func:`zoom_rotate`): the transformation robustness of Olah
    et al. 2017, which keeps the ascent from writing patterns that only work at one exact size
    and orientation. One draw for the whole batch, so a batch gives the images of separate
    runs."""
    zoom, turn = (2 * torch.rand(2, generator=generator, dtype=torch.float64) - 1).tolist()
    return zoom_rotate(images, 1 + scale * zoom, degrees * turn)


def zoom_rotate(images, factor, degrees):
    """``images`` magnified by ``factor`` and turned by ``degrees`` counter-clockwise (as
    displayed, rows down) about their centre, resampled bilinearly with a reflected border."""
    angle = math.radians(degrees)
    # affine_grid maps output to input coordinates: the inverse of the zoom and turn.
    inverse = torch.tensor([[math.cos(angle), -math.sin(angle), 0.0],
                            [math.sin(angle), math.cos(angle), 0.0]], dtype=images.dtype,
                           device=images.device) / factor
    grid = F.affine_grid(inverse.expand(len(images), 2, 3), list(images.shape),
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection",
                         align_corners=False)


def total_variation(images):
    """Mean absolute difference of neighbouring pixels, per image: (N,)."""
    return ((images[..., 1:, :] - images[..., :-1, :]).abs().mean((1, 2, 3))
            + (images[..., :, 1:] - images[..., :, :-1]).abs().mean((1, 2, 3)))


def objective_function(model, layer, units, neuron):
    """The quantity each batch row maximizes: (N, C, H, W) inputs -> (N,) values.

    Args:
        layer: None for class scores (``units`` are classes), else a conv-part layer whose
            channels ``units`` are maximized (mean activation, or the centre unit).
    """
    if layer is None:
        return lambda inputs: model(inputs).gather(1, units[:, None])[:, 0]
    # One unit: ascend its value before the ReLU, which has the same maximum wherever it is
    # positive, so a unit that starts negative still gets a gradient. The mean keeps its ReLU
    # (before it, the mean is another, linear objective); a random start image (--init
    # random, the default for filters) gives it live units to climb from.
    before = neuron and isinstance(model.get_submodule(block_end(model, layer)), nn.ReLU)

    def channel_value(inputs):
        maps = as_feature_maps(layer_output(model, layer, inputs, before), model, layer)
        activation = maps[torch.arange(len(units)), units]  # (N, h, w)
        if neuron:
            return activation[:, activation.shape[1] // 2, activation.shape[2] // 2]
        return activation.mean((1, 2))
    return channel_value


def gradient_ascent(model, info, units, *, layer=None, neuron=False, param="pixel",
                    regularizers=Regularizers(), steps=256, lr=0.05, polish=0.25, init="zero",
                    seed=0, progress=False):
    """Optimize one input per unit (class or channel), all in one batch.

    Maximizes objective(I) - l2 ||I||^2 - tv TV(I) (Simonyan et al. 2014, Eq. 1) with Adam,
    jittering the input each step, blurring every ``blur_every`` steps and clipping to the
    valid pixel range (pixel parameterization). The last ``polish`` fraction of the steps
    drops the jitter: with it the ascent maximizes the objective averaged over random shifts,
    which can leave the unshifted image, the one returned and scored, short of the maximum
    (MNIST vgg class 5: p = 0.97 without polish, >= 0.99 with it).

    Args:
        units: (N,) class indices (``layer`` None) or channel indices of ``layer``.
        param: ``pixel`` or ``fft``.
        polish: fraction of ``steps``, in [0, 1].

    Returns:
        images (N, C, H, W) in [0, 1] and the objective values reached (N,).
    """
    generator = torch.Generator().manual_seed(seed)
    weight = next(model.parameters())  # the images follow the model's device and dtype
    kind = PixelImage if param == "pixel" else FourierImage
    parameterization = kind(len(units), info, init, generator, weight.device, weight.dtype)
    objective = objective_function(model, layer, units.to(weight.device), neuron)
    optimizer = torch.optim.Adam(parameterization.parameters, lr=lr)
    polish_from = steps - round(polish * steps)
    for step in tqdm(range(steps), disable=not progress, desc="gradient ascent", unit="step"):
        rules = (regularizers if step < polish_from
                 else replace(regularizers, jitter=0, scale=0.0, rotate=0.0))
        image = parameterization.image()
        if rules.scale or rules.rotate:
            image = random_zoom_rotate(image, rules.scale, rules.rotate, generator)
        if rules.jitter:
            dy, dx = torch.randint(-rules.jitter, rules.jitter + 1, (2,), generator=generator)
            image = torch.roll(image, (int(dy), int(dx)), dims=(2, 3))
        loss = -objective(image).sum() + rules.l2 * (image ** 2).sum()
        if rules.tv:
            loss = loss + rules.tv * total_variation(image).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rules.blur_every and rules.blur_sigma and (step + 1) % rules.blur_every == 0 \
                and step + 1 < steps:
            parameterization.blur(rules.blur_sigma)
        if rules.clip:
            parameterization.clip()
    with torch.no_grad():
        final = parameterization.image()
        return info.denormalize(final), objective(final)
