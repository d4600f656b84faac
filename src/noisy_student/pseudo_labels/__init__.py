"""Pseudo labels: the teacher's predictions, the paper's filter-and-balance rule, the student's targets.

- :mod:`.targets`: softmax, top-k storage, dense soft/hard targets, ``selected.parquet`` -> the student's rows;
- :mod:`.shards`: the input shards ``predict`` reads (rows of ``unlabeled.npz`` or tars of ``unlabeled.wds``)
  and the Parquet shards it writes (layout, streaming writer, metrics, listing);
- :mod:`.select`: filter-and-balance out of core over those shards, and its statistics;
- :mod:`.keyed`: ``selected.parquet`` of a tar pool -> the student's targets keyed by sample key;
- :mod:`.predict`: the teacher labelling the pool (imports torch, so it is not re-exported here).
"""

from noisy_student.pseudo_labels.keyed import KeyedTargets, keyed_student_targets
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
from noisy_student.pseudo_labels.shards import (
    TarPool,
    load_pool,
    predict_metrics,
    prediction_table,
    shard_files,
    write_prediction_shards,
)
from noisy_student.pseudo_labels.targets import (
    TOPK_CLASSES,
    TOPK_PROBS,
    dense_from_top_k,
    pool_positions,
    read_selected,
    selected_targets,
    selection_stats,
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
    "KeyedTargets",
    "ShardSelection",
    "TarPool",
    "confidence_bins",
    "dense_from_top_k",
    "filter_balance",
    "filter_balance_shards",
    "keyed_student_targets",
    "load_pool",
    "pool_positions",
    "predict_metrics",
    "prediction_table",
    "read_selected",
    "select_rows",
    "selected_targets",
    "selection_stats",
    "shard_files",
    "softmax",
    "student_targets",
    "targets_from_probs",
    "top_k",
    "write_prediction_shards",
    "write_table",
]
