from __future__ import annotations

import filecmp
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from noisy_student.config import FilterParams, ParamsError, load_params, parse_params
from noisy_student.pseudo_labels import select
from noisy_student.pseudo_labels.select import filter_balance, filter_balance_shards, select_rows
from noisy_student.pseudo_labels.shards import prediction_table
from noisy_student.pseudo_labels.targets import (
    TOPK_CLASSES,
    TOPK_PROBS,
    SelectedImages,
    dense_from_top_k,
    pool_positions,
    selected_targets,
    softmax,
    student_targets,
    targets_from_probs,
    top_k,
)
from tests.reference_filter import filter_and_balance

ROOT = Path(__file__).resolve().parents[1]


def test_threshold_drops_low_confidence_rows() -> None:
    pred = np.array([0, 0, 1, 1])
    conf = np.array([0.9, 0.2, 0.29, 0.3])
    frame, stats = filter_and_balance(pred, conf, 2, threshold=0.3, per_class=10, balance=False, seed=0)
    assert frame["row"].tolist() == [0, 3]
    assert frame["copies"].tolist() == [1, 1]
    assert stats["dropped_low_confidence"] == 2


def test_cap_keeps_the_most_confident_per_class() -> None:
    pred = np.array([0, 0, 0, 0, 1])
    conf = np.array([0.5, 0.9, 0.7, 0.6, 0.8])
    frame, stats = filter_and_balance(pred, conf, 2, threshold=0.0, per_class=2, balance=False, seed=0)
    assert frame["row"].tolist() == [1, 2, 4]  # class 0 keeps 0.9 and 0.7
    assert stats["per_class"][0]["dropped_over_cap"] == 2


def test_balance_duplicates_short_classes_up_to_k() -> None:
    # class 0: 3 rows, class 1: 1 row, class 2: none; K = 7
    pred = np.array([0, 0, 0, 1])
    conf = np.array([0.9, 0.8, 0.7, 0.6])
    frame, stats = filter_and_balance(pred, conf, 3, threshold=0.0, per_class=7, balance=True, seed=1)
    copies = dict(zip(frame["row"], frame["copies"], strict=True))
    assert copies[0] + copies[1] + copies[2] == 7
    assert sorted(copies[r] for r in (0, 1, 2)) == [2, 2, 3]  # 7 = 3*2 + 1 extra at random
    assert copies[3] == 7
    assert stats["total"] == 14 and stats["unique"] == 4
    assert stats["per_class"][2]["total"] == 0  # nothing to duplicate


def test_balance_is_seeded() -> None:
    pred = np.zeros(5, dtype=int)
    conf = np.linspace(0.5, 0.9, 5)
    a, _ = filter_and_balance(pred, conf, 1, 0.0, 13, True, seed=3)
    b, _ = filter_and_balance(pred, conf, 1, 0.0, 13, True, seed=3)
    assert a.equals(b)
    assert a["copies"].sum() == 13


def test_shape_mismatch_is_rejected() -> None:
    with pytest.raises(ValueError, match="shape"):
        filter_and_balance(np.zeros(3), np.zeros(4), 2, 0.3, 1, True, 0)


def test_softmax_temperature_and_hard_targets() -> None:
    logits = np.array([[0.0, np.log(3.0)]])
    np.testing.assert_allclose(softmax(logits), [[0.25, 0.75]], rtol=1e-6)
    # T = 2 halves the logits: exp(log(3)/2) = sqrt(3)
    s3 = np.sqrt(3.0)
    np.testing.assert_allclose(softmax(logits, 2.0), [[1 / (1 + s3), s3 / (1 + s3)]], rtol=1e-6)
    probs = np.array([[0.2, 0.5, 0.3]], dtype=np.float32)
    assert targets_from_probs(probs, "hard").tolist() == [[0.0, 1.0, 0.0]]
    np.testing.assert_array_equal(targets_from_probs(probs, "soft"), probs)


def _probs(n: int, k: int, seed: int, ties: bool = True) -> np.ndarray:
    """(n, k) float32 softmax rows; with ``ties`` a third of the rows are rounded so equal values occur."""
    rng = np.random.default_rng(seed)
    p = softmax(rng.normal(size=(n, k)) * 2)
    if ties:
        p[: n // 3] = np.round(p[: n // 3], 1)
    return p


@pytest.mark.parametrize("k", [1, 2, 5, 10])
def test_top_k_matches_a_stable_full_sort(k: int) -> None:
    probs = _probs(600, 10, seed=k)
    values, classes = top_k(probs, k)
    expected = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    assert classes.dtype == np.int32 and values.dtype == np.float32
    np.testing.assert_array_equal(classes, expected)
    np.testing.assert_array_equal(values, np.take_along_axis(probs, expected, axis=1))
    np.testing.assert_array_equal(classes[:, 0], probs.argmax(1))  # top-1 is the predicted class


def test_top_k_rejects_k_outside_1_to_num_classes() -> None:
    with pytest.raises(ValueError, match="top_k"):
        top_k(_probs(4, 3, 0), 4)


def test_top_k_with_all_classes_reproduces_the_full_distribution_exactly() -> None:
    probs = _probs(500, 10, seed=1)
    dense = dense_from_top_k(*top_k(probs, 10), 10)
    np.testing.assert_array_equal(dense, probs)  # bit for bit: no renormalisation when nothing is dropped
    np.testing.assert_array_equal(targets_from_probs(dense, "soft"), targets_from_probs(probs, "soft"))


def test_top_1_is_the_hard_label() -> None:
    probs = _probs(500, 10, seed=2)
    dense = dense_from_top_k(*top_k(probs, 1), 10)
    np.testing.assert_array_equal(dense, targets_from_probs(probs, "hard"))


def test_top_k_targets_are_renormalised_and_keep_the_argmax() -> None:
    probs = _probs(500, 10, seed=3)
    dense = dense_from_top_k(*top_k(probs, 3), 10)
    np.testing.assert_allclose(dense.sum(1), 1.0, rtol=1e-6)
    assert ((dense > 0).sum(1) <= 3).all()
    np.testing.assert_array_equal(dense.argmax(1), probs.argmax(1))
    np.testing.assert_array_equal(targets_from_probs(dense, "hard"), targets_from_probs(probs, "hard"))


def _pool(n: int, k: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """ids, source, labels (-1 = out of domain), probs of a synthetic unlabeled pool."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    labels = rng.integers(-1, k, n).astype(np.int64)
    source = np.where(labels < 0, "digits", "fashion_mnist")
    return ids, source, labels, _probs(n, k, seed)


def test_prediction_table_without_top_k_is_the_original_layout_plus_the_tar() -> None:
    ids, source, labels, probs = _pool(50)
    reference = pa.table(  # the table `predict` wrote before prediction_table existed, then the tar's name
        {
            "id": pa.array(ids),
            "source": pa.array(source.astype(str)),
            "label": pa.array(labels),
            "pred": pa.array(probs.argmax(1).astype(np.int32)),
            "confidence": pa.array(probs.max(1)),
            "probs": pa.FixedSizeListArray.from_arrays(pa.array(probs.reshape(-1)), probs.shape[1]),
            "shard": pa.array(["unlabeled-000007.tar"] * 50, pa.string()),
        }
    )
    table = prediction_table(ids, source, labels, probs, "unlabeled-000007.tar")
    assert table.equals(reference, check_metadata=True)
    # top-k: the k largest in place of probs, the tar's name still last; no sample key column any more
    top = prediction_table(ids, source, labels, probs, "unlabeled-000007.tar", 3)
    assert top.column_names == ["id", "source", "label", "pred", "confidence", TOPK_PROBS, TOPK_CLASSES, "shard"]
    assert top.drop_columns([TOPK_PROBS, TOPK_CLASSES]).equals(table.drop_columns(["probs"]))
    assert top.schema.field("shard").type == pa.string()


def _tar(index: int) -> str:
    """The name of tar ``index`` of the unlabeled pool (the output's ``shard`` column)."""
    return f"unlabeled-{index:06d}.tar"


def _write_shards(folder: Path, n: int, shard: int, k: int | None, seed: int = 0) -> None:
    """Prediction shards of a synthetic pool of ``n`` images in tars of ``shard``: part j from tar j."""
    folder.mkdir(parents=True)
    ids, source, labels, probs = _pool(n, seed=seed)
    for i, start in enumerate(range(0, n, shard)):
        sl = slice(start, start + shard)
        pq.write_table(
            prediction_table(ids[sl], source[sl], labels[sl], probs[sl], _tar(i), k), folder / f"part-{i:05d}.parquet"
        )


def _reference_selected(folder: Path, out: Path, threshold: float, per_class: int, balance: bool, **kw: int) -> None:
    """The in-memory filter-balance stage as it was: whole table, filter_and_balance, take, one write."""
    table = pq.read_table(folder)
    selected, _ = filter_and_balance(
        table["pred"].to_numpy(), table["confidence"].to_numpy(), 10, threshold, per_class, balance, seed=7
    )
    out_table = table.take(selected["row"].to_numpy()).append_column("copies", [selected["copies"].to_numpy()])
    pq.write_table(out_table, out, **kw)


@pytest.mark.parametrize(
    ("k", "threshold", "per_class", "balance"),
    [(None, 0.3, 40, True), (None, 0.0, 1000, False), (3, 0.3, 40, True), (None, 1.1, 40, True)],
)
def test_out_of_core_filter_balance_writes_the_same_file(
    tmp_path: Path, k: int | None, threshold: float, per_class: int, balance: bool
) -> None:
    folder = tmp_path / "predictions"
    _write_shards(folder, 1000, 128, k)  # 8 shards, the last one short
    _reference_selected(folder, tmp_path / "reference.parquet", threshold, per_class, balance)
    sel = filter_balance_shards(folder, tmp_path / "selected.parquet", 10, threshold, per_class, balance, seed=7)
    assert filecmp.cmp(tmp_path / "reference.parquet", tmp_path / "selected.parquet", shallow=False)
    table = pq.read_table(folder)
    np.testing.assert_array_equal(sel.confidence, table["confidence"].to_numpy())
    np.testing.assert_array_equal(sel.label, table["label"].to_numpy())


def test_out_of_core_filter_balance_splits_row_groups_like_write_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(select, "ROW_GROUP_ROWS", 70)
    folder = tmp_path / "predictions"
    _write_shards(folder, 1000, 128, None)
    _reference_selected(folder, tmp_path / "reference.parquet", 0.3, 40, True, row_group_size=70)
    filter_balance_shards(folder, tmp_path / "selected.parquet", 10, 0.3, 40, True, seed=7)
    assert pq.ParquetFile(tmp_path / "selected.parquet").metadata.num_row_groups > 3
    assert filecmp.cmp(tmp_path / "reference.parquet", tmp_path / "selected.parquet", shallow=False)


def test_selected_targets_reads_both_layouts(tmp_path: Path) -> None:
    for k in (None, 10, 2):
        folder = tmp_path / f"predictions-{k}"
        _write_shards(folder, 300, 100, k)
        out = tmp_path / f"selected-{k}.parquet"
        filter_balance_shards(folder, out, 10, 0.3, 40, True, seed=7)
        ids, copies, probs = selected_targets(pq.read_table(out), 10)
        if k is None:
            full = probs
        assert probs.shape == (len(ids), 10) and (copies >= 1).all()
        if k == 10:
            np.testing.assert_array_equal(probs, full)
        if k == 2:
            np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)
            np.testing.assert_array_equal(probs.argmax(1), full.argmax(1))


def test_missing_predictions_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run `predict` first"):
        filter_balance_shards(tmp_path / "nope", tmp_path / "out.parquet", 10, 0.3, 5, True, 0)


@pytest.mark.parametrize("balance", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_selection_equals_the_reference(balance: bool, seed: int) -> None:
    rng = np.random.default_rng(seed)
    n, classes = 5000, 12
    pred = rng.integers(0, classes - 2, n)  # the last two classes are empty
    pred[:5] = [-1, classes, classes + 3, -2, classes]  # out-of-range predictions match no class
    conf = np.round(rng.random(n).astype(np.float32), 2)  # many exact ties: the stable tie-break matters
    frame, stats = filter_and_balance(pred, conf, classes, 0.3, 450, balance, seed)
    rows, copies, stats2 = select_rows(pred, conf, classes, 0.3, 450, balance, seed)
    np.testing.assert_array_equal(rows, frame["row"].to_numpy())
    np.testing.assert_array_equal(copies, frame["copies"].to_numpy())
    assert stats2 == stats


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_sort_key_orders_like_lexsort(dtype: type) -> None:
    rng = np.random.default_rng(0)
    cls = rng.integers(0, 7, 3000).astype(np.int32)
    conf = np.round(rng.random(3000), 2).astype(dtype)
    conf[:10] = [0.0, -0.0, 1.0, 0.0, -0.0, 1.0, 0.5, 0.5, 0.0, 1.0]  # signed zeros tie in the reference
    order = select._class_then_confidence_order(cls, conf)
    np.testing.assert_array_equal(order, np.lexsort((-conf, cls)))


def _old_student_join(table: pa.Table, pool_ids: np.ndarray, mode: str) -> tuple[np.ndarray, np.ndarray, int, float]:
    """The student stage's join before student_targets existed: a dict of the pool, repeat, targets."""
    ids, copies, probs = selected_targets(table, 10)
    pos = {int(i): n for n, i in enumerate(pool_ids)}
    rows = np.repeat(np.array([pos[int(i)] for i in ids], dtype=np.int64), copies)
    return rows, targets_from_probs(np.repeat(probs, copies, axis=0), mode), int(copies.sum()), float(probs.sum())


@pytest.mark.parametrize(("k", "mode"), [(None, "soft"), (3, "soft"), (None, "hard")])
def test_student_targets_join_the_pool_and_repeat_by_copies(tmp_path: Path, k: int | None, mode: str) -> None:
    folder = tmp_path / "predictions"
    _write_shards(folder, 300, 100, k)
    out = tmp_path / "selected.parquet"
    filter_balance_shards(folder, out, 10, 0.3, 40, True, seed=7)
    ids = _pool(300)[0]
    # the pool in another order than the predictions, with one id twice: the last occurrence wins, as in a dict
    order = np.random.default_rng(1).permutation(300)
    pool_ids = np.concatenate([ids[order], ids[order[:1]]])
    selected, stats = student_targets(out, 10, mode)
    table = pq.read_table(out)
    # one row per selected image, in the file's order, with the tar that holds it
    assert isinstance(selected, SelectedImages) and len(selected) == table.num_rows
    np.testing.assert_array_equal(selected.ids, table["id"].to_numpy())
    np.testing.assert_array_equal(selected.copies, table["copies"].to_numpy())
    assert selected.shards.tolist() == table["shard"].to_pylist()
    assert set(selected.shards.tolist()) <= {_tar(j) for j in range(3)}
    assert selected.ids.dtype == selected.copies.dtype == np.int64 and selected.targets.dtype == np.float32
    rows, targets = selected.rows(pool_ids, out)
    want_rows, want_targets, copies_sum, probs_sum = _old_student_join(table, pool_ids, mode)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_array_equal(targets, want_targets)
    np.testing.assert_array_equal(np.repeat(selected.targets, selected.copies, axis=0), want_targets)
    assert rows.dtype == np.int64 and targets.dtype == np.float32 and targets.shape == (len(rows), 10)
    assert stats == {
        "pseudo_labeled_rows": len(want_rows),
        "pseudo_labeled_unique": table.num_rows,
        "copies_sum": copies_sum,
        "probs_sum": probs_sum,
    }


def test_student_targets_name_the_file_on_bad_input(tmp_path: Path) -> None:
    folder = tmp_path / "predictions"
    _write_shards(folder, 100, 100, None)
    ids = _pool(100)[0]
    with pytest.raises(FileNotFoundError, match=r"nope\.parquet: .*run `filter-balance` first"):
        student_targets(tmp_path / "nope.parquet", 10, "soft")
    empty = tmp_path / "empty.parquet"
    filter_balance_shards(folder, empty, 10, 1.1, 40, True, seed=0)  # threshold above every confidence
    with pytest.raises(ValueError, match=r"empty\.parquet: no pseudo-labeled image passed .*threshold=1\.1"):
        student_targets(empty, 10, "soft", threshold=1.1)
    selected = tmp_path / "selected.parquet"
    filter_balance_shards(folder, selected, 10, 0.0, 40, False, seed=0)
    chosen, _ = student_targets(selected, 10, "soft")
    with pytest.raises(ValueError, match=r"selected\.parquet: 2 ids not in the unlabeled pool"):
        chosen.rows(ids[2:], selected)  # a pool without two of its images
    table = pq.read_table(selected)
    # predicted before every pool was a tar folder: no tar to stream an image from
    pq.write_table(table.drop_columns(["shard"]), tmp_path / "noshard.parquet")
    with pytest.raises(ValueError, match=r"noshard\.parquet: no 'shard' column; .*in-memory pool"):
        student_targets(tmp_path / "noshard.parquet", 10, "soft")
    pq.write_table(pa.concat_tables([table, table.slice(0, 2)]), tmp_path / "twice.parquet")
    with pytest.raises(ValueError, match=r"twice\.parquet: 2 ids selected more than once"):
        student_targets(tmp_path / "twice.parquet", 10, "soft")


def test_selected_images_rows_must_match_the_ids() -> None:
    with pytest.raises(ValueError, match=r"SelectedImages\.shards has 1 rows, ids have 2"):
        SelectedImages(np.array([1, 2]), np.array(["a.tar"]), np.zeros((2, 3), np.float32), np.ones(2, np.int64))


@pytest.mark.parametrize("where", ["top", "iteration"])
def test_params_that_set_pseudo_labels_shard_size_are_told_the_tar_size_replaced_it(where: str, tmp_path: Path) -> None:
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    if where == "top":
        raw["pseudo_labels"]["shard_size"] = 20000
        key = "pseudo_labels.shard_size"
    else:
        raw["iterations"]["it1"]["pseudo_labels"] = {"shard_size": 20000}
        key = "iterations.it1.pseudo_labels.shard_size"
    message = rf"key '{re.escape(key)}': removed: .*one tar at a time; the tar size is data\.wds_shard_size; delete it"
    with pytest.raises(ParamsError, match=message):
        parse_params(raw, "params.yaml")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=rf"params\.yaml: invalid parameters:\n  - {message}"):
        load_params(tmp_path / "params.yaml")


def test_pool_positions() -> None:
    pool_ids = np.array([30, 10, 20, 10], dtype=np.int64)
    np.testing.assert_array_equal(pool_positions(pool_ids, np.array([10, 20, 30, 40, 5])), [3, 2, 0, -1, -1])
    np.testing.assert_array_equal(pool_positions(pool_ids[:0], np.array([1])), [-1])


@pytest.mark.parametrize("all_unknown", [False, True])
def test_filter_balance_reports_out_of_domain_and_selected_accuracy(tmp_path: Path, all_unknown: bool) -> None:
    folder = tmp_path / "predictions"
    _write_shards(folder, 400, 128, None)
    table = pq.read_table(folder)
    if all_unknown:  # data.source folders: no label is known, so there is no in/out-of-domain split
        table = table.set_column(2, "label", pa.array(np.full(400, -1, dtype=np.int64)))
        folder = tmp_path / "unknown"
        folder.mkdir()
        pq.write_table(table, folder / "part-00000.parquet")
    result = filter_balance(folder, tmp_path / "selected.parquet", FilterParams(confidence_threshold=0.3), seed=7)
    rows, copies, stats = select_rows(
        table["pred"].to_numpy(), table["confidence"].to_numpy(), 10, 0.3, FilterParams().images_per_class, True, 7
    )
    label, pred = table["label"].to_numpy(), table["pred"].to_numpy()
    assert list(result.stats) == [
        "rows_in",
        "dropped_low_confidence",
        "dropped_above_bin",
        "unique",
        "total",
        "out_of_domain_in",
        "out_of_domain_kept",
        "out_of_domain_dropped",
        "selected_pseudo_label_accuracy",
    ]
    assert result.per_class.to_dict("records") == stats["per_class"]
    np.testing.assert_array_equal(result.out_of_domain, label < 0)
    if all_unknown:
        assert all(np.isnan(result.stats[k]) for k in list(result.stats)[5:])
    else:
        ood = label[rows] < 0
        assert result.stats["out_of_domain_in"] == (label < 0).sum()
        assert result.stats["out_of_domain_kept"] == ood.sum()
        assert result.stats["selected_pseudo_label_accuracy"] == (pred[rows[~ood]] == label[rows[~ood]]).mean()
    assert "out-of-domain dropped" in result.summary
