"""Robustness evaluation in the style of the Noisy Student paper (Xie et al., CVPR 2020, Sec. 4).

- ``corruptions``: the 15 ImageNet-C corruptions x 5 severities as batched torch ops;
- ``perturbations``: ImageNet-P style perturbation sequences;
- ``attacks``: FGSM and PGD in 0..1 pixel space, accuracy under attack;
- ``metrics``: mCE / relative mCE, flip probability / mFR, top-5 distance / mT5D, ImageNet-A masking;
- ``loaders``: readers for the released ImageNet-A/-C/-P folder layouts;
- ``build``: the embedded -C/-P/-A test sets and their reference model (stage ``robustness-data``);
- ``evaluate``: one model on the embedded sets, the released benchmarks and the attacks (stages ``eval-*``).

Import from the modules themselves (nothing is re-exported here): ``build`` and ``evaluate`` pull in
scikit-learn, the model code and pandas, which the pure functions need not load.
"""
