"""cnn-viz's shared package: what the scripts at the top level are made of. Scripts import
only from here; one folder per concern, so that a concept is found by its folder's name.

Folders:
    nets/         the networks: ``simple`` and ``vgg`` (architectures), torchvision's (zoo),
                  layers by name and hooks on them (layers), receptive fields, checkpoints
    data/         images in: the datasets, your own class folders, image files, the ``shapes``
                  set, batch streaming and augmentation, seeded samples of test images
    training/     recipes, the training loop, test-time views and accuracy, the optimizer
    attribution/  every attribution method in one registry (occlusion and its incremental
                  form, the CAM family, gradient methods), map maths, test-time
                  augmentation of a map
    units/        what one unit of a layer responds to: the DeconvNet mirror, the top dataset
                  images per channel, how often each channel fires (dead filters), gradient
                  ascent (class models and channel images)
    evaluation/   how far to trust a map: deletion/insertion, ROAD, Average Drop, randomization,
                  agreement, the ground-truth metrics (pointing game), the cost of each
                  method, the explorer's survey of every method's maps
    figures/      drawing: matplotlib set up quietly, heatmaps, overlays, mosaics, curves
    report/       the report page and the explorer page: they read results, never compute them
    runtime/      device, precision (bfloat16 where measured fast) and memory, images per
                  batch, seeding, atomic files, several processes
    cli/          the command line: argument types and shared flags, one-line errors and
                  Ctrl-C, what a method script explains (model, images, targets, saved maps)
    pipeline/     the report's run: its plan (measured costs, counts fitted to a budget),
                  training when needed, every script run in-process, the explorer's survey
    errors.py     ``UserError``, the one exception the command line turns into a message

Import rules (``IMPORT_RULES``; ``tests/test_structure.py`` holds them): for each folder, the
folders of ``model`` and the outside packages its modules must not import. Methods never
import training code, drawing or argparse; data, nets and runtime import no method; drawing
and the report read results and never recompute them (of ``attribution`` they may read the
registry's descriptions and the map maths alone).
"""

METHODS_AND_ABOVE = ("attribution", "units", "evaluation", "training", "figures", "report", "cli",
                     "pipeline")
DRAWING_AND_ABOVE = ("figures", "report", "cli", "pipeline")

IMPORT_RULES = {
    "runtime": {"model": ("nets", "data", *METHODS_AND_ABOVE), "outside": ("matplotlib",)},
    "nets": {"model": METHODS_AND_ABOVE, "outside": ("matplotlib", "argparse")},
    "data": {"model": METHODS_AND_ABOVE, "outside": ("matplotlib", "argparse")},
    "training": {"model": ("attribution", "units", "evaluation", *DRAWING_AND_ABOVE),
                 "outside": ("matplotlib", "argparse")},
    "attribution": {"model": ("training", "units", "evaluation", *DRAWING_AND_ABOVE),
                    "outside": ("matplotlib", "argparse")},
    "units": {"model": ("training", "evaluation", *DRAWING_AND_ABOVE),
              "outside": ("matplotlib", "argparse")},
    "evaluation": {"model": ("training", *DRAWING_AND_ABOVE),
                   "outside": ("matplotlib", "argparse")},
    "figures": {"model": ("attribution", "units", "evaluation", "training", "report", "cli",
                          "pipeline"),
                "outside": ("argparse",)},
    "report": {"model": ("attribution", "units", "evaluation", "training", "cli", "pipeline"),
               "outside": ("argparse",)},
    "cli": {"model": ("figures", "report", "pipeline"), "outside": ("matplotlib",)},
    # the report's run sits on top of everything: it may use every folder, nothing uses it
    "pipeline": {"model": (), "outside": ("argparse",)},
}

# What figures/ and report/ may read of attribution/: descriptions and map maths, no method.
READ_ONLY_MODULES = ("model.attribution.registry", "model.attribution.maps")
