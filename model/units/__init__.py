"""What one unit of a layer responds to: the DeconvNet mirror (``mirror``, Zeiler & Fergus
2014), the dataset images that excite a channel most (``activation_search``), on how many
images each channel fires at all (``firing``: dead filters) and gradient ascent on the input
(``ascent``: class models and channel images).

Imports: ``model.nets``, ``model.data``, ``model.runtime``, ``model.attribution`` (the hook
rules of its gradient methods); no training code, no drawing, no argparse
(``model.IMPORT_RULES``).
"""
