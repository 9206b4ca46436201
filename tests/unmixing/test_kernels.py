"""Compiled kernels and the warm-started threshold search against their numpy definitions."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fluoscan.unmixing import ConvergenceWarning, SparseNMF, compiled
from fluoscan.unmixing.kernels import update_abundance
from fluoscan.unmixing.sparsity import sparsity_threshold
from fluoscan.unmixing.threshold_search import search_threshold, search_thresholds
from fluoscan.tests.unmixing.synthetic import mouse_scene

needs_numba = pytest.mark.skipif(not compiled.AVAILABLE, reason="numba is not installed")
# Relative error allowed between a compiled kernel and numpy: a few roundings of the dtype.
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}


def random_problem(n_rows: int, n_wavelengths: int, n_components: int, dtype, seed: int = 0):
    rng = np.random.default_rng(seed)
    M = rng.random((n_rows, n_wavelengths)).astype(dtype)
    A = rng.random((n_rows, n_components)).astype(dtype)
    S = rng.random((n_components, n_wavelengths)).astype(dtype)
    return M, A, S


def relative_error(value: np.ndarray, expected: np.ndarray) -> float:
    return float(np.max(np.abs(value - expected)) / np.max(np.abs(expected)))


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    ("n_rows", "row_offset", "block_rows", "accumulate"),
    [
        (1000, 0, 256, (True, True, True)),
        (1000, 100, 256, (True, False, True)),
        (7, 3, 4, (False, False, False)),
        (513, 255, 1, (True, True, False)),
    ],
)
def test_frobenius_pass_matches_blas_update(dtype, n_rows, row_offset, block_rows, accumulate):
    M, A, S = random_problem(n_rows, 37, 3, dtype)
    SSt = S @ S.T
    expected_A = A.copy()
    update_abundance(expected_A, M, S, SSt)
    accumulate = np.array(accumulate)
    AtM = np.ones((3, 37))

    compiled.frobenius_pass(M, A, S, SSt, AtM, accumulate, row_offset, block_rows)

    assert relative_error(A, expected_A) < TOLERANCE[dtype]
    expected_AtM = np.where(accumulate[:, None], 1.0 + expected_A.T.astype(np.float64) @ M, 1.0)
    assert relative_error(AtM, expected_AtM) < TOLERANCE[dtype]


@needs_numba
def test_frobenius_pass_floors_zero_denominator():
    M, A, S = random_problem(4, 8, 2, np.float64)
    A[1] = 0.0
    compiled.frobenius_pass(M, A, S, S @ S.T, np.zeros((2, 8)), np.ones(2, dtype=bool), 0, 256)
    assert np.all(np.isfinite(A))
    assert np.all(A[1] == 0.0)


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("row_offset", [0, 200])
def test_rows_product_skips_zero_rows(dtype, row_offset):
    M, W, _ = random_problem(600, 21, 2, dtype, seed=1)
    W[np.random.default_rng(2).random(600) < 0.8] = 0.0
    M[np.all(W == 0, axis=1)] = np.nan  # never read
    out = np.zeros((2, 21))
    compiled.rows_product(M, W, out, row_offset, 256)
    kept = np.any(W != 0, axis=1)
    expected = W[kept].T.astype(np.float64) @ M[kept]
    assert relative_error(out, expected) < TOLERANCE[dtype]


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_squared_residuals_match_numpy(dtype):
    M, A, S = random_problem(300, 50, 3, dtype, seed=3)
    out = np.empty(300, dtype=dtype)
    compiled.row_squared_residuals(M, A, S, out)
    expected = np.sum((M.astype(np.float64) - A.astype(np.float64) @ S) ** 2, axis=1)
    assert relative_error(out, expected) < TOLERANCE[dtype] * 10


@needs_numba
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_threshold_gram_cuts_and_counts(dtype):
    _, A_work, _ = random_problem(400, 1, 3, dtype, seed=4)
    A_work[:50, 1] = 0.0
    thresholds = np.array([0.0, 0.6, 0.9], dtype=dtype)
    A = np.empty_like(A_work)
    AtA = np.empty((3, 3))
    counts = compiled.threshold_gram(A_work, A, thresholds, np.empty((3, 400), dtype=dtype), AtA)

    expected = A_work * (A_work >= thresholds)
    assert np.array_equal(A, expected)
    assert counts[0].tolist() == np.count_nonzero(expected, axis=0).tolist()
    assert counts[1].tolist() == np.count_nonzero(A_work, axis=0).tolist()
    assert relative_error(AtA, expected.T.astype(np.float64) @ expected) < 1e-12


def threshold_columns_table():
    """Columns with the features the search must get right: ties, zeros, heavy tails, short columns."""
    rng = np.random.default_rng(5)
    columns = {
        "uniform": rng.random(3000).astype(np.float32),
        "heavy_tail": (rng.random(3000) ** 8).astype(np.float32),
        "ties": (np.round(rng.random(2000) * 20) / 20).astype(np.float32),
        "mostly_zero": np.where(rng.random(2000) < 0.9, 0.0, rng.random(2000)),
        "exponential": rng.exponential(1.0, 5000),
        "two_entries": np.array([1.0, 0.5]),
        "constant": np.full(100, 2.0),
    }
    return [pytest.param(column, id=name) for name, column in columns.items()]


@needs_numba
@pytest.mark.parametrize("column", threshold_columns_table())
@pytest.mark.parametrize("target", [0.0, 0.3, 0.6, 0.9, 0.99, 1.0])
@pytest.mark.parametrize("hint", ["exact", "low", "high", "far_low", "none"])
def test_search_threshold_matches_full_sort(column, target, hint):
    expected = sparsity_threshold(column, target)
    reference = expected.threshold if expected.threshold > 0 else float(np.max(column)) / 2
    previous = {"exact": reference, "low": reference * 0.97, "high": reference * 1.04, "far_low": reference * 0.01, "none": 0.0}[hint]

    cut, width = search_threshold(column, target, previous)

    assert cut.n_kept == expected.n_kept
    assert cut.threshold == expected.threshold
    assert cut.beta == expected.beta
    assert cut.sparsity == pytest.approx(expected.sparsity, abs=1e-12, nan_ok=True)
    assert 0 < width <= 0.9


@needs_numba
def test_search_threshold_all_zero_column():
    cut, _ = search_threshold(np.zeros(50), 0.9, previous=1.0)
    assert cut.n_kept == 0
    assert np.isnan(cut.sparsity)


def fit_mouse(sparsity, dtype):
    A_true, S_true, _ = mouse_scene(ny=40, nx=48, seed=1)
    M = (A_true.reshape(-1, 3) @ S_true).astype(dtype)
    model = SparseNMF(3, sparsity=sparsity, max_iter=60, tol=0, n_jobs=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        A = model.fit_transform(M, S_true * 1.1 + 0.05)
    return model, A


@needs_numba
@pytest.mark.parametrize(("dtype", "tolerance"), [(np.float64, 1e-9), (np.float32, 2e-3)])
@pytest.mark.parametrize("sparsity", [None, [None, 0.8, 0.8], [None, 0.3, "auto"]])
def test_compiled_fit_matches_blas_fit(monkeypatch, dtype, tolerance, sparsity):
    model, A = fit_mouse(sparsity, dtype)
    monkeypatch.setattr(compiled, "AVAILABLE", False)
    blas_model, blas_A = fit_mouse(sparsity, dtype)

    assert relative_error(A, blas_A) < tolerance
    assert relative_error(model.components_, blas_model.components_) < tolerance
    assert model.n_zeroed_.tolist() == blas_model.n_zeroed_.tolist()
    assert model.loss_history_ == pytest.approx(blas_model.loss_history_, rel=tolerance)


@needs_numba
def test_threshold_search_time_is_recorded():
    model, _ = fit_mouse([None, 0.8, 0.8], np.float32)
    assert 0 < model.threshold_seconds_per_iter_ < model.seconds_per_iter_


@needs_numba
def test_search_thresholds_reads_columns_at_once():
    rng = np.random.default_rng(6)
    matrix = np.stack([rng.random(4000) ** 6, np.round(rng.random(4000) * 10) / 10, rng.exponential(1.0, 4000)], axis=1)
    targets = [0.9, 0.5, 0.7]
    expected = [sparsity_threshold(matrix[:, k], targets[k]) for k in range(3)]
    previous = [expected[0].threshold * 1.02, expected[1].threshold, expected[2].threshold * 0.5]

    found = search_thresholds(matrix, [0, 1, 2], targets, previous, [0.01, 0.05, 0.01])

    for (cut, _), reference in zip(found, expected):
        assert cut.n_kept == reference.n_kept
        assert cut.threshold == reference.threshold
