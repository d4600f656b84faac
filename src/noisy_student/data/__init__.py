"""Image sources, deterministic splits and the in-memory image-set format.

Only the image-set format is re-exported here (NumPy only); building the
prepared folder lives in :mod:`noisy_student.data.prepare`, which imports
torch and PIL.
"""

from noisy_student.data.imageset import (
    ImageSet,
    class_count,
    load_classes,
    load_imageset,
    save_classes,
    save_imageset,
)

__all__ = ["ImageSet", "class_count", "load_classes", "load_imageset", "save_classes", "save_imageset"]
