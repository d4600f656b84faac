"""Noisy Student Training (Xie et al., CVPR 2020) on timm, DVC and MLflow."""

__version__ = "0.1.0"
