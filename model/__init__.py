"""cnn-viz's shared package: architectures, datasets, checkpoints, layer access and CLI plumbing.

Modules:
    architectures    ``simple`` and ``vgg`` nets with named layers; ``get_layer``, ``split_at``
    datasets         torchvision datasets and ``shapes`` as in-memory tensors; ``DatasetInfo``
    dataset_files    checks of torchvision's files: damaged or mismatched files named
    shapes           the offline shapes dataset with ground-truth object masks
    checkpoint       atomic, validated, ``weights_only`` checkpoints
    engine           batch streaming, augmentation, training and evaluation loops, recipes
    runtime          device choice, seeding, atomic file and figure output, name-length checks
    cli              one-line errors, Ctrl-C and SIGTERM, argument types, the shared flags
    errors           ``UserError``, the one exception the CLI turns into a one-line message
    images           what a method script explains: model, ``--index``/``--image``, targets
    heatmaps         map normalization, resizing, overlays and mosaics
    plotting         matplotlib set up quietly (config folder, glyph warnings); ``Figure``
    receptive_field  receptive fields from kernel, stride and padding
    metrics          pointing game and mass inside the object mask
    evaluation       deletion/insertion, model randomization, agreement, cost meter
    filters          Gaussian blur
"""
