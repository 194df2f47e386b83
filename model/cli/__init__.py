"""The command line: argument types and the shared flags (``arguments``), one-line errors and
Ctrl-C / SIGTERM (``running``), what a method script explains: the model, ``--index`` /
``--image`` inputs and ``--save-maps`` (``method_inputs``), ``--target`` (``targets``).

The only folder that imports argparse; no drawing (``model.IMPORT_RULES``).
"""
