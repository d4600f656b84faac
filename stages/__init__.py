"""Thin entry points, one per DVC stage; ``noisy-student --help`` lists them."""
