"""How many images go through the net at once where many do (perturbed copies in occlusion,
Score-CAM, Ablation-CAM, deletion / insertion, ROAD; test-set predictions, activation scans):
a pixel budget that keeps a batch's activations in cache."""


VARIANT_PIXELS = 32 * 224 * 224  # pixels per batch (see images_per_batch)


def images_per_batch(batch_size, height, width):
    """``batch_size``, at most ``VARIANT_PIXELS`` pixels of ``height`` x ``width`` images. At
    32 px that is the 256 asked for; at 224 px it is 32: larger batches' activations overflow
    the caches and the passes slow down, the backward ones most. Measured on a 2-core "AMD
    EPYC" (Zen 5), float32, channels-last weights and images: torchvision's MobileNetV2 at 224
    px, forward + backward 24 ms an image in batches of 32 against 71 ms in batches of 64
    (forward alone 9 against 10 ms); ResNet-18 43 against 45 ms. The images of 256 at 224 px
    (ResNet-18: about 3 GB of activations) made the perturbation methods slower than their
    forward passes alone (bench/speed_224.py measures it on the CPU at hand)."""
    return max(1, min(batch_size, VARIANT_PIXELS // (height * width)))


def variant_batch(batch_size, images):
    """How many perturbed copies of ``images`` (N, C, H, W) to send through the net at once:
    :func:`images_per_batch` for their size."""
    return images_per_batch(batch_size, *images.shape[-2:])
