"""Drawing: matplotlib set up quietly for scripts (``plotting``: ``Figure``, ``save_figure``),
heatmap overlays, mosaics and colour maps (``heatmaps``), the training curve (``curves``).

Figures read results and never compute them: of ``model.attribution`` only the map maths
(``maps``) and the registry's descriptions may be imported (``model.IMPORT_RULES``).
"""
