from __future__ import annotations

import numpy as np

from noisy_student.evaluation import topk_accuracy


def test_topk_accuracy_hand_computed() -> None:
    logits = np.array(
        [
            [0.1, 0.9, 0.0],  # top1 = 1
            [0.5, 0.2, 0.3],  # top1 = 0, top2 = {0, 2}
            [0.2, 0.3, 0.5],  # top1 = 2, top2 = {2, 1}
            [0.9, 0.1, 0.0],  # unknown label: ignored
        ]
    )
    labels = np.array([1, 2, 0, -1])
    acc = topk_accuracy(logits, labels, ks=(1, 2, 5))
    assert acc["top1"] == 1 / 3
    assert acc["top2"] == 2 / 3
    assert acc["top5"] == 1.0  # k larger than the class count covers everything
