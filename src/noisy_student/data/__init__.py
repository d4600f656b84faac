"""Image sources, deterministic splits and the in-memory image-set format."""

from noisy_student.data.imageset import ImageSet, load_classes, load_imageset, save_classes, save_imageset

__all__ = ["ImageSet", "load_classes", "load_imageset", "save_classes", "save_imageset"]
