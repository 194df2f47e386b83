"""Images in: the datasets as tensors (``datasets``), your own class folders (``folders``),
image files (``image_files``), the offline ``shapes`` set (``shapes``), checks of downloaded
files (``dataset_files``), batch streaming (``batches``) and augmentation (``augmentation``),
seeded samples of test images for galleries (``sampling``).

Imports: ``model.errors``, ``model.runtime`` and ``model.nets``; no method, no training code,
no drawing (``model.IMPORT_RULES``).
"""
