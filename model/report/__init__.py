"""The report's pages: ``index.html`` (``page``), the evaluation's tables (``tables``) and the
explorer (``explorer`` with its template ``explorer.html``).

The report reads results (JSON, PNGs, a ``GallerySurvey``) and never computes them: of
``model.attribution`` only the map maths and the registry's descriptions may be imported
(``model.IMPORT_RULES``).
"""
