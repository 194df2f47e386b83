"""Photos for the benches: a seeded draw from an image folder's evaluation split."""
import torch

from model.data.datasets import load_dataset
from model.errors import UserError


def seeded_photos(data_dir, count, size, seed, flags="--images"):
    """``count`` normalized photos (ImageNet's mean and std) of the folder's ``val/`` at
    ``size`` px, drawn by ``seed``: (count, 3, size, size).

    Raises:
        UserError: the folder has fewer photos; ``flags`` names what asked for them.
    """
    dataset = load_dataset("imagefolder", "test", data_dir, image_size=size)
    if count > len(dataset):
        raise UserError(f"{data_dir} has {len(dataset)} evaluation photos, fewer than "
                        f"{flags} = {count}")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
    return dataset.info.normalize(dataset.images[order[:count]])  # from uint8
