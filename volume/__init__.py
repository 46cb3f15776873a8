"""One scan on its own, below both halves: headers read and checked before any voxel, reorientation to LPS,
resampling, intensity statistics and normalization, and the way back to the source grid.

The build (``pipeline/``) runs these on every case of a dataset; inference (``model/``: ``predict``,
``classify-predict``, ``evaluate``) runs the same code on one new scan with a store's recipe
(:func:`volume.preprocess.preprocess_scan`) and pastes its prediction back (:func:`volume.original_grid.to_original_grid`).
Nothing here knows of stores being written, datasets, dask or torch; it imports only ``catalog`` (to read a recipe).
"""
