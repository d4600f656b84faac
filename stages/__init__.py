"""Thin entry points, one per DVC stage; ``python -m stages --help`` lists them."""
