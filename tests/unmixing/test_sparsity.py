"""Hoyer sparsity and the exact threshold that brings a column to a target sparsity."""

import itertools

import numpy as np
import pytest

from fluoscan.unmixing import hoyer_sparsity
from fluoscan.unmixing.sparsity import (
    apply_threshold,
    noise_threshold,
    sparsity_threshold,
    threshold_columns,
)


@pytest.mark.parametrize(
    ("vector", "expected"),
    [
        ([0.0, 0.0, 5.0, 0.0], 1.0),
        ([2.0, 2.0, 2.0, 2.0], 0.0),
        ([1.0, 1.0, 0.0, 0.0], (2.0 - np.sqrt(2.0)) / (2.0 - 1.0)),
        ([3.0, 4.0], (np.sqrt(2.0) - 7.0 / 5.0) / (np.sqrt(2.0) - 1.0)),
    ],
)
def test_hoyer_known_values(vector, expected):
    assert hoyer_sparsity(np.array(vector)) == pytest.approx(expected, abs=1e-12)


def test_hoyer_of_zero_vector_is_nan():
    assert np.isnan(hoyer_sparsity(np.zeros(5)))


def test_hoyer_per_column_and_whole_array():
    matrix = np.array([[1.0, 1.0], [0.0, 1.0], [0.0, 1.0]])
    per_column = hoyer_sparsity(matrix)
    assert per_column.shape == (2,)
    assert per_column[0] == pytest.approx(1.0)
    assert per_column[1] == pytest.approx(0.0)
    assert hoyer_sparsity(matrix.T, axis=1) == pytest.approx(per_column)
    assert np.ndim(hoyer_sparsity(matrix, axis=None)) == 0


def test_hoyer_is_scale_invariant():
    vector = np.random.default_rng(0).random(50)
    assert hoyer_sparsity(vector) == pytest.approx(hoyer_sparsity(1e6 * vector))


@pytest.mark.parametrize(
    ("vector", "match"),
    [
        ([1.0], "at least 2 entries"),
        ([1.0, -0.5, 2.0], "non-negative"),
        ([1.0, np.nan], "NaN or infinity"),
        ([1.0, np.inf], "NaN or infinity"),
    ],
)
def test_hoyer_rejects_bad_input(vector, match):
    with pytest.raises(ValueError, match=match):
        hoyer_sparsity(np.array(vector))


def _brute_force_best(column, target):
    """Try every threshold at a value of the column; return the cut with the sparsity closest to target."""
    best = None
    for threshold in sorted(set(column[column > 0].tolist())):
        kept = np.where(column >= threshold, column, 0.0)
        sparsity = hoyer_sparsity(kept)
        key = (abs(sparsity - target), -np.count_nonzero(kept))
        if best is None or key < best[0]:
            best = (key, sparsity, int(np.count_nonzero(kept)))
    return best


@pytest.mark.parametrize(("seed", "target"), list(itertools.product(range(12), [0.0, 0.3, 0.6, 0.85, 1.0])))
def test_threshold_matches_brute_force(seed, target):
    rng = np.random.default_rng(seed)
    column = rng.random(rng.integers(2, 30))
    column[rng.random(column.size) < 0.3] = 0.0
    # Repeated values test the rule that a threshold cannot split equal entries.
    column[: column.size // 3] = np.round(column[: column.size // 3], 1)
    if not column.any():
        column[0] = 1.0
    cut = sparsity_threshold(column, target)
    _, best_sparsity, best_kept = _brute_force_best(column, target)
    assert cut.sparsity == pytest.approx(best_sparsity, abs=1e-12)
    assert cut.n_kept == best_kept


def _full_sort_threshold(column, target):
    """Return (n_kept, sparsity) of the closest realisable cut, from one full sort (the reference)."""
    values = np.sort(column[column > 0].astype(np.float64))[::-1]
    root = np.sqrt(column.size)
    sparsity = (root - np.cumsum(values) / np.sqrt(np.cumsum(values**2))) / (root - 1.0)
    realisable = np.append(values[:-1] > values[1:], True)
    distance = np.where(realisable, np.abs(sparsity - target), np.inf)
    best = np.flatnonzero(distance <= distance.min() + 1e-12)[-1]
    return best + 1, sparsity[best]


def _heavy_tail(rng, size):
    return rng.pareto(1.5, size)


def _spikes_on_floor(rng, size):
    column = rng.uniform(0.001, 1.0, size)
    column[rng.choice(size, 20, replace=False)] = 1000.0
    return column


def _rounded(rng, size):
    return np.round(rng.exponential(1.0, size), 1)


def _constant_with_bump(rng, size):
    column = np.full(size, 2.0)
    column[: size // 10] = 3.0
    return column


@pytest.mark.parametrize("make", [_heavy_tail, _spikes_on_floor, _rounded, _constant_with_bump])
@pytest.mark.parametrize("target", [0.3, 0.7, 0.9, 0.99])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_on_long_columns_matches_full_sort(make, target, dtype):
    # Long columns take the partition path, and spikes on a floor make it widen its search.
    column = make(np.random.default_rng(11), 100_000).astype(dtype)
    cut = sparsity_threshold(column, target)
    n_kept, sparsity = _full_sort_threshold(column, target)
    assert cut.n_kept == n_kept
    assert cut.sparsity == pytest.approx(sparsity, abs=1e-12)
    out = np.empty_like(column)
    apply_threshold(column, cut, out)
    assert np.count_nonzero(out) == n_kept


@pytest.mark.parametrize("target", [0.6, 0.75, 0.9])
def test_threshold_cut_reaches_reported_sparsity(target):
    column = np.random.default_rng(3).random(200) ** 4
    cut = sparsity_threshold(column, target)
    assert cut.threshold > 0
    out = np.empty_like(column)
    apply_threshold(column, cut, out)
    assert np.count_nonzero(out) == cut.n_kept
    assert hoyer_sparsity(out) == pytest.approx(cut.sparsity, abs=1e-12)
    assert cut.beta == pytest.approx(column.max() / cut.threshold)


def test_threshold_tie_keeps_denser_cut():
    # Keeping {2} gives sparsity 1 and keeping {2, 1, 1} gives 1/3, so target 2/3 ties between them.
    column = np.array([2.0, 1.0, 1.0, 0.0])
    sparse = hoyer_sparsity(np.array([2.0, 0.0, 0.0, 0.0]))
    dense = hoyer_sparsity(column)
    cut = sparsity_threshold(column, (sparse + dense) / 2)
    assert cut.n_kept == 3


def test_threshold_of_sparse_enough_column_cuts_nothing():
    column = np.array([0.0, 0.0, 3.0, 1.0, 0.0, 0.0])
    cut = sparsity_threshold(column, 0.1)
    assert cut.n_kept == 2
    assert cut.threshold == 0.0
    assert cut.beta == np.inf


def test_threshold_of_zero_column():
    cut = sparsity_threshold(np.zeros(4), 0.5)
    assert cut.n_kept == 0
    assert np.isnan(cut.sparsity)


@pytest.mark.parametrize(("column", "target", "match"), [([1.0], 0.5, "at least 2"), ([1.0, 2.0], 1.5, r"\[0, 1\], got 1.5")])
def test_threshold_rejects_bad_input(column, target, match):
    with pytest.raises(ValueError, match=match):
        sparsity_threshold(np.array(column), target)


def test_noise_threshold_keeps_bright_target():
    rng = np.random.default_rng(1)
    column = np.abs(rng.normal(0.0, 1.0, 1000))
    column[:20] += 50.0
    cut = noise_threshold(column)
    out = np.empty_like(column)
    zeroed = apply_threshold(column, cut, out)
    assert np.all(out[:20] > 0)
    assert np.count_nonzero(out[20:]) < 20
    assert zeroed > 900


def test_threshold_columns_leaves_unconstrained_columns():
    rng = np.random.default_rng(2)
    weights = rng.random((100, 3)) ** 3
    out = np.empty_like(weights)
    cuts, n_zeroed = threshold_columns(weights, [None, 0.8, "auto"], out)
    assert cuts[0] is None
    assert np.array_equal(out[:, 0], weights[:, 0])
    assert n_zeroed[0] == 0
    assert n_zeroed[1] == 100 - cuts[1].n_kept
    assert hoyer_sparsity(out[:, 1]) == pytest.approx(cuts[1].sparsity)
