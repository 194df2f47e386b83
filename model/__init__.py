"""cnn-viz's shared package: architectures, datasets, checkpoints, layer access and CLI plumbing.

Modules:
    architectures  ``simple`` and ``vgg`` nets with named layers; ``get_layer``
    datasets       torchvision datasets and ``shapes`` as in-memory tensors; ``DatasetInfo``
    shapes         the offline shapes dataset with ground-truth object masks
    checkpoint     atomic, validated, ``weights_only`` checkpoints
    engine         batch streaming, augmentation, training and evaluation loops, recipes
    runtime        device choice, seeding, atomic file and figure output
    cli            one-line errors, argument types, the flags every script shares
"""
