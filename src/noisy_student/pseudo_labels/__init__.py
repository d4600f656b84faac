"""Pseudo labels: the teacher's predictions, the paper's filter-and-balance rule, the student's targets.

- :mod:`.targets`: softmax, top-k storage, dense soft/hard targets, ``selected.parquet`` -> the student's rows;
- :mod:`.shards`: the Parquet shards ``predict`` writes (layout, streaming writer, metrics, listing);
- :mod:`.select`: filter-and-balance out of core over those shards, and its statistics;
- :mod:`.predict`: the teacher labelling the pool (imports torch, so it is not re-exported here).
"""

from noisy_student.pseudo_labels.select import (
    CONFIDENCE_BINS,
    ROW_GROUP_ROWS,
    SELECTION_COLUMNS,
    FilterResult,
    ShardSelection,
    confidence_bins,
    filter_balance,
    filter_balance_shards,
    select_rows,
    write_table,
)
from noisy_student.pseudo_labels.shards import predict_metrics, prediction_table, shard_files, write_prediction_shards
from noisy_student.pseudo_labels.targets import (
    TOPK_CLASSES,
    TOPK_PROBS,
    dense_from_top_k,
    pool_positions,
    selected_targets,
    softmax,
    student_targets,
    targets_from_probs,
    top_k,
)

__all__ = [
    "CONFIDENCE_BINS",
    "ROW_GROUP_ROWS",
    "SELECTION_COLUMNS",
    "TOPK_CLASSES",
    "TOPK_PROBS",
    "FilterResult",
    "ShardSelection",
    "confidence_bins",
    "dense_from_top_k",
    "filter_balance",
    "filter_balance_shards",
    "pool_positions",
    "predict_metrics",
    "prediction_table",
    "select_rows",
    "selected_targets",
    "shard_files",
    "softmax",
    "student_targets",
    "targets_from_probs",
    "top_k",
    "write_prediction_shards",
    "write_table",
]
