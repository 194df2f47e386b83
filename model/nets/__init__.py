"""The networks: the project's ``simple`` and ``vgg`` nets (``architectures``), torchvision's
(``zoo``), layers by name and hooks on them (``layers``), any net cut after a layer with
``torch.fx`` (``graph_split``), receptive fields (``receptive_field``) and checkpoints
(``checkpoint``).

Imports: ``model.errors``, ``model.runtime`` and ``model.data`` (a checkpoint names its
dataset); no method, no training code, no drawing (``model.IMPORT_RULES``).
"""
