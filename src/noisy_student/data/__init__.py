"""Image sources, deterministic splits, the in-memory image set and its on-disk form (WebDataset tars).

Re-exported here: the image set and the functions that save and load a split folder; building the
prepared folder lives in :mod:`noisy_student.data.prepare`.
"""

from noisy_student.data.imageset import ImageSet, class_count, load_classes, save_classes
from noisy_student.data.wds import load_imageset, save_imageset

__all__ = ["ImageSet", "class_count", "load_classes", "load_imageset", "save_classes", "save_imageset"]
