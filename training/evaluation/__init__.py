"""Evaluation of place-recognition descriptors.

- ``metrics``: exact cosine search, ground-truth positives, recall@N (MSLS/Pittsburgh protocol),
  top-1 localization accuracy against distance, and the PCA-whitening dimension sweep.
- ``baselines``: the raw-pixel SAD baseline every learnt descriptor has to beat.
- ``real_dev``: leave-one-out recall@1 on a few real photographs, the check that a model trained
  on synthetic images still works on a camera.
- ``plots``: report figures, written atomically.

The submodules are imported explicitly (``from training.evaluation.metrics import ...``) so that
computing a metric never pays for importing matplotlib or OpenCV.
"""
