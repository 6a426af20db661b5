"""Datasets: the procedural synthetic COCO-format shapes set and a reader for COCO detection files."""

from detspec.data.synthetic import (
    CATEGORIES,
    CATEGORY_IDS,
    CLASS_NAMES,
    MIN_VISIBLE_FRACTION,
    CocoDetectionDataset,
    SyntheticCOCO,
    generate_sample,
    make_synthetic_coco,
)

__all__ = [
    "CATEGORIES",
    "CATEGORY_IDS",
    "CLASS_NAMES",
    "MIN_VISIBLE_FRACTION",
    "CocoDetectionDataset",
    "SyntheticCOCO",
    "generate_sample",
    "make_synthetic_coco",
]
