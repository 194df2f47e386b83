"""How many images go through the net at once where many do (perturbed copies in occlusion,
Score-CAM, Ablation-CAM, deletion / insertion, ROAD; test-set predictions, activation scans):
a pixel budget that keeps a batch's activations in cache."""


VARIANT_PIXELS = 64 * 224 * 224  # pixels per batch (see images_per_batch)


def images_per_batch(batch_size, height, width):
    """``batch_size``, at most ``VARIANT_PIXELS`` pixels of ``height`` x ``width`` images. At
    32 px that is the 256 asked for; at 224 px it is 64: 256 images' activations (ResNet-18:
    about 3 GB) overflow every cache, and the perturbation methods then take longer than
    their forward passes alone (bench/speed_224.py measures it on the CPU at hand); the
    trained MobileNetV2 classifies 140 photos/s in batches of 64 and 94 in batches of 512
    (channels-last, float32, 2-core "AMD EPYC" Zen 5)."""
    return max(1, min(batch_size, VARIANT_PIXELS // (height * width)))


def variant_batch(batch_size, images):
    """How many perturbed copies of ``images`` (N, C, H, W) to send through the net at once:
    :func:`images_per_batch` for their size."""
    return images_per_batch(batch_size, *images.shape[-2:])
