"""How many perturbed copies of an image go through the net at once (occlusion, Score-CAM,
Ablation-CAM, deletion / insertion): a pixel budget that keeps a batch's activations in cache."""


VARIANT_PIXELS = 64 * 224 * 224  # pixels per batch of perturbed copies (see variant_batch)


def variant_batch(batch_size, images):
    """How many perturbed copies of ``images`` (N, C, H, W) to send through the net at once
    (occlusion, Score-CAM, Ablation-CAM, deletion / insertion): ``batch_size``, at most
    ``VARIANT_PIXELS`` pixels. At 32 px that is the 256 asked for; at 224 px it is 64: 256
    copies' activations (ResNet-18: about 3 GB) overflow every cache, and the perturbation
    methods then take longer than their forward passes alone (bench/speed_224.py measures
    it on the CPU at hand)."""
    return max(1, min(batch_size, VARIANT_PIXELS // (images.shape[-2] * images.shape[-1])))
