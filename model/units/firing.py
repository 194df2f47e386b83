"""How often each channel fires on a dataset: on how many images its feature map is positive
somewhere. A channel that never is, is a dead filter: after a ReLU it passes nothing on, for
any of these images.

One streamed pass over the images serves every layer: each batch goes through the net once,
every layer's count is taken in that pass as the layer makes its maps
(``model.nets.layers.layer_statistics``), and a batch leaves behind only (K,) counts per layer.
A pass per layer, or keeping every layer's maps until the pass ends, costs the same forward
passes again or the memory of all the maps of a batch.
"""
import torch

from model.data.batches import iterate_batches
from model.data.datasets import small_images
from model.nets.layers import layer_statistics
from model.runtime.batching import images_per_batch
from model.runtime.device import fast_layout

STATISTICS_IMAGES = 1000  # test images for the statistics, up to 64 px
PHOTO_STATISTICS_IMAGES = 250  # above 64 px (see statistics_images)


def statistics_images(image_size):
    """How many test images the firing statistics read by default: 1000 up to 64 px (a pass
    costs little), 250 above, spread over the split (``dataset.spread``).

    Measured on the trained ImageNet MobileNetV2 of ``../shared/data`` and Imagenette's 3,925
    val photos (``python bench/feature_maps_speed.py ... --sample-sizes 100 250 500 1000``):
    every 15th photo (262) finds the same 3 dead channels of 2,816 as all 3,925 do, and the
    channels' firing shares are 0.74 points from all photos' on average, 7.1 at most; the
    first 1,000 photos (3 of the 10 classes; the default before) were 1.64 points off on
    average, 18.0 at most. The pass costs about 10 ms a photo on 2 CPU cores.
    """
    return STATISTICS_IMAGES if small_images(image_size) else PHOTO_STATISTICS_IMAGES


def fires(maps):
    """(N, K, h, w) feature maps -> (N, K) bool: whether each channel is positive somewhere in
    each image's map."""
    return maps.amax((2, 3)) > 0  # over both axes at once: no copy of a channels-last batch


def channels_fired(maps):
    """(N, K, h, w) feature maps -> (K,) int64: on how many of the N images each channel is
    positive somewhere."""
    return fires(maps).sum(0)


@torch.no_grad()
def firing_counts(model, dataset, layers, device, batch_size=256):
    """On how many of ``dataset``'s images each channel of each layer is positive somewhere.

    Args:
        model: a net in eval mode.
        dataset: an ``ImageDataset`` or ``FolderDataset``.
        layers: layer names; a conv name stands for its rectified output
            (``model.nets.layers.block_end``).
        batch_size: images per pass, at most ``images_per_batch`` of the dataset's size (32 at
            224 px), in channels-last order: the layout and batch size of every other scan
            (``model.runtime.batching``).

    Returns:
        name -> (K,) int64 counts on ``device``, in the order of ``layers``.
    """
    size = dataset.info.image_size
    counts = dict.fromkeys(layers, 0)
    for inputs, _ in iterate_batches(dataset, images_per_batch(batch_size, size, size), device):
        fired = layer_statistics(model, fast_layout(inputs), layers, channels_fired)
        for layer in layers:
            counts[layer] = counts[layer] + fired[layer]
    return counts
