"""Training: per-dataset recipes (``recipes``), the loop (``loop``), test-time views and the
test accuracy (``views``), the schedule and optimizer (``optim``).

Imports: ``model.nets``, ``model.data``, ``model.runtime``; no method, no drawing, no
argparse (``model.IMPORT_RULES``).
"""
