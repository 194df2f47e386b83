"""Training augmentation on batches already on the device: random crops of the padded image
(zeros or reflected borders), flips (random, or alternating by epoch as in airbench), Cutout.

Every random choice of an epoch comes from a generator seeded with ``(seed, epoch)``
(:func:`epoch_generator`), so an epoch is the same whether training ran straight through or was
resumed from a checkpoint.
"""
import torch
import torch.nn.functional as F


def epoch_generator(seed, epoch):
    """The generator for every random choice of one epoch, derived from (seed, epoch)."""
    return torch.Generator().manual_seed(seed * 100_003 + epoch)


def random_crop_flip(images, generator, padding=4, reflect=False, flip=None):
    """Random crop of the padded image plus random horizontal flip, per image, batched.

    The standard CIFAR-10 augmentation (He et al. 2016, sec. 4.2: zero padding 4) on a uint8
    or float batch; with ``reflect`` the border is mirrored instead (a translation by up to
    ``padding`` pixels that invents no black frame, as in Jordan's airbench).

    Args:
        images: (N, C, H, W).
        generator: CPU generator for the offsets (and the flips, unless given).
        flip: optional (N,) bool tensor, which images to mirror.
    Returns:
        (N, C, H, W), same dtype and device.
    """
    n, _, height, width = images.shape
    offset_y = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    offset_x = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
    if flip is None:
        flip = torch.rand(n, generator=generator) < 0.5
    flip = flip.cpu()[:, None]
    cols = torch.arange(width)[None, :]
    cols = torch.where(flip, width - 1 - cols, cols) + offset_x  # (N, W) in padded coordinates
    rows = torch.arange(height)[None, :] + offset_y  # (N, H)
    device = images.device
    batch_index = torch.arange(n, device=device)[:, None, None]
    if reflect:  # index the image itself, mirrored at the border: (N, H), (N, W)
        rows, cols = _reflect(rows - padding, height), _reflect(cols - padding, width)
        source = images
    else:
        source = F.pad(images, (padding,) * 4)  # (N, C, H+2p, W+2p)
    crops = source[batch_index, :, rows.to(device)[:, :, None], cols.to(device)[:, None, :]]
    return crops.permute(0, 3, 1, 2)  # advanced indexing put channels last: (N, H, W, C)


def _reflect(index, size):
    """Indices outside 0..size-1 mirrored at the border (F.pad's "reflect" mode)."""
    index = index.abs()
    return torch.where(index >= size, 2 * (size - 1) - index, index)


def cutout(images, generator, size):
    """Set one random ``size`` x ``size`` square of each normalized image to zero, the
    dataset's mean colour (DeVries & Taylor 2017, "Improved Regularization of Convolutional
    Neural Networks with Cutout"; the square lies inside the image, as in airbench96).

    Args:
        images: (N, C, H, W) normalized batch; not changed.
        generator: CPU generator for the squares' corners.
    """
    n, _, height, width = images.shape
    top = torch.randint(0, height - size + 1, (n, 1, 1), generator=generator)
    left = torch.randint(0, width - size + 1, (n, 1, 1), generator=generator)
    rows = torch.arange(height)[None, :, None]
    cols = torch.arange(width)[None, None, :]
    inside = (rows >= top) & (rows < top + size) & (cols >= left) & (cols < left + size)
    return images.masked_fill(inside[:, None].to(images.device), 0.0)


def alternating_flips(count, seed, epoch):
    """Which of ``count`` training images to mirror in ``epoch``: a random half (fixed by
    ``seed``) in odd epochs, the other half in even ones. Airbench's alternating flip: every
    two epochs show each image both ways, where independent coin flips would show about a
    quarter of them one way only."""
    first_half = torch.rand(count, generator=torch.Generator().manual_seed(seed)) < 0.5
    return first_half if epoch % 2 else ~first_half
