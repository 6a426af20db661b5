"""The I/O floor: every file detspec reads or writes, and nothing above it (no models, no commands).

- ``fileio``: atomic writes, output-path checks, ``UserError``, JSON inputs;
- ``images``: image files under one set of pixel rules, the model's input format, drawn detections (PNG);
- ``videos``: ``.npy`` frame arrays and video files (PyAV);
- ``coco``: COCO annotation and results files, read, validated and written;
- ``categories``: the COCO category table and ``CategoryMap`` (category id <-> contiguous class index).
"""
