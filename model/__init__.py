"""cnn-viz's shared package: architectures, datasets, checkpoints, layer access, the attribution
methods and the CLI plumbing. Method scripts import only from here.

Modules:
    registry          the attribution-method registry: ``register``, ``METHODS``, ``get_method``
    attribution       imports every method (fills the registry) and adds the ``random`` baseline
    occlusion         occlusion sensitivity, batched over images and patch positions
    incremental       incremental occlusion (Krypton): only the box a patch changes, per layer
    cam               the CAM family on one core (CAM, Grad-CAM, ..., Score-CAM, Eigen-CAM)
    gradients         input gradients by ReLU rule (backward hooks), Integrated Gradients, IxG
    mirror            the explicit DeconvNet mirror with max-pool switches
    activation_search streamed top-k activations per channel, channel-list parsing
    layers            layers by name on any ``nn.Module``: hooks that record or replace outputs
    faithfulness      deletion/insertion, model randomization, agreement, cost meter
    architectures     ``simple`` and ``vgg`` nets with named layers, the whitening stem;
                      ``get_layer``, ``conv_layer_names``, ``block_end``, ``split_at``
    zoo               torchvision's resnet18, alexnet, vgg16, mobilenet_v2: small-image
                      stems, ``--weights`` files and ImageNet class names
    datasets          torchvision datasets and ``shapes`` as in-memory tensors; ``DatasetInfo``;
                      ``load_dataset`` for every ``--dataset``, ``imagefolder`` included
    folders           your own class folders, streamed by a DataLoader (``FolderDataset``)
    dataset_files     checks of torchvision's files: damaged or mismatched files named
    shapes            the offline shapes dataset with ground-truth object masks
    checkpoint        atomic, validated, ``weights_only`` checkpoints
    engine            recipes, batch streaming, augmentation, training loop, test-time views
    optim             the one-cycle schedule; SGD with per-group learning-rate scales
    runtime           device choice, seeding, atomic file and figure output, name-length
                      checks, freed memory kept for reuse
    cli               one-line errors, Ctrl-C and SIGTERM, argument types, the shared flags
    errors            ``UserError``, the one exception the CLI turns into a one-line message
    images            what a method script explains: model, ``--index``/``--image``, targets
    image_files       one image file as a model input: upright, converted, resized / cropped
    heatmaps          map normalization, resizing, signed display, overlays and mosaics
    plotting          matplotlib set up quietly (config folder, glyph warnings); ``Figure``
    receptive_field   receptive fields from kernel, stride and padding
    metrics           pointing game and mass inside the object mask
    blur              Gaussian blur (equal to torchvision's)
"""
