"""How far to trust a map: deletion and insertion, the randomization sanity check and the
methods' agreement (``faithfulness``), the ground-truth metrics (``ground_truth``: pointing
game, mass inside the object) and the time and memory each method costs (``cost``).

Imports: ``model.attribution`` and below; no training code, no drawing, no argparse
(``model.IMPORT_RULES``).
"""
