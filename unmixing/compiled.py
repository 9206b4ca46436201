"""Single-pass Frobenius kernels compiled with numba, for the CPU update loop.

The BLAS block kernels of :mod:`fluoscan.unmixing.kernels` read each block of M twice (M Sᵀ, then
AᵀM) through matrix products whose inner dimension is the number of components P, a shape that BLAS
runs far below its speed on square matrices. The kernels here visit M once per row. The P dot
products of the A update, the new A row and its share of AᵀM all use the row while it is in L1
cache, so a pass costs little more than reading M from memory.

Shapes: M (n_rows, n_wavelengths), A (n_rows, P), S (P, n_wavelengths), SSt (P, P).

Every kernel releases the GIL (``nogil``), so that the update loop runs one stripe of rows per thread.
Sums over a row run in the data's dtype; each ``block_rows`` rows, counted from global row 0, the
block's float32 (or float64) partial sums are added to float64 accumulators. The blocks match the
BLAS path's row blocks, so both paths round alike and a row-block (Dask) backend that passes each
block's ``row_offset`` gets the same partial sums as the in-memory loop.

numba is a dependency of pylablib, which fluoscan needs, so it is normally installed. When it is not,
:data:`AVAILABLE` is False and the loop falls back to the BLAS kernels.
"""

from __future__ import annotations

import logging

import numpy as np

from fluoscan.unmixing.kernels import EPSILON

log = logging.getLogger(__name__)

try:
    from numba import njit
except ImportError:  # pragma: no cover - numba comes with pylablib
    AVAILABLE = False
    log.info("numba is not installed; SparseNMF uses the BLAS block kernels")
else:
    AVAILABLE = True

# Reassociation lets LLVM split each row's dot product into SIMD lanes, and contraction lets it use
# fused multiply-adds. Both change only the rounding. No "fast" flags that assume finite values or
# approximate the division are set, because the zero-denominator guard and the quotient must stay exact.
_FASTMATH = {"reassoc", "contract"}


# Rows whose AᵀM contributions are added to the partial sums in one sweep.
_TILE_ROWS = 4


def _compile(function):
    if not AVAILABLE:
        return None
    # cache=True keeps the machine code in __pycache__, so that only the first fit on a machine compiles.
    return njit(nogil=True, fastmath=_FASTMATH, cache=True)(function)


def _frobenius_pass(M, A, S, SSt, AtM, accumulate, row_offset, block_rows):
    """Update A ← A ∘ (M Sᵀ) ⊘ (A SSᵀ) in place, row by row, and add the new AᵀM to ``AtM``.

    ``accumulate`` (P,) bool selects the columns whose AᵀM is summed; the others are left as they are.
    """
    n_rows, n_wavelengths = M.shape
    n_components = S.shape[0]
    numerator = np.empty(n_components, dtype=M.dtype)
    denominator = np.empty(n_components, dtype=M.dtype)
    partial = np.zeros((n_components, n_wavelengths), dtype=M.dtype)
    boundary = (row_offset // block_rows + 1) * block_rows - row_offset
    start = 0
    while start < n_rows:
        # Rows of the same block, at most 4, share one read-modify-write of the partial sums.
        stop = min(start + _TILE_ROWS, n_rows, boundary)

        for i in range(start, stop):
            if n_components == 3:
                # The usual three components: one sweep over the row feeds all three dot products.
                total0, total1, total2 = np.float32(0), np.float32(0), np.float32(0)
                for j in range(n_wavelengths):
                    value = M[i, j]
                    total0 += value * S[0, j]
                    total1 += value * S[1, j]
                    total2 += value * S[2, j]
                numerator[0], numerator[1], numerator[2] = total0, total1, total2
            else:
                for p in range(n_components):
                    total = np.float32(0)
                    for j in range(n_wavelengths):
                        total += M[i, j] * S[p, j]
                    numerator[p] = total
            for p in range(n_components):
                total = np.float32(0)
                for q in range(n_components):
                    total += A[i, q] * SSt[q, p]
                denominator[p] = total if total != 0 else EPSILON
            for p in range(n_components):
                A[i, p] = A[i, p] * (numerator[p] / denominator[p])

        full_tile = stop - start == _TILE_ROWS
        if full_tile and n_components == 3 and accumulate[0] and accumulate[1] and accumulate[2]:
            # One sweep over the tile's rows updates the partial sums of all three columns.
            a00, a01, a02 = A[start, 0], A[start, 1], A[start, 2]
            a10, a11, a12 = A[start + 1, 0], A[start + 1, 1], A[start + 1, 2]
            a20, a21, a22 = A[start + 2, 0], A[start + 2, 1], A[start + 2, 2]
            a30, a31, a32 = A[start + 3, 0], A[start + 3, 1], A[start + 3, 2]
            for j in range(n_wavelengths):
                m0, m1, m2, m3 = M[start, j], M[start + 1, j], M[start + 2, j], M[start + 3, j]
                partial[0, j] += a00 * m0 + a10 * m1 + a20 * m2 + a30 * m3
                partial[1, j] += a01 * m0 + a11 * m1 + a21 * m2 + a31 * m3
                partial[2, j] += a02 * m0 + a12 * m1 + a22 * m2 + a32 * m3
            start = stop
            if start == boundary or start == n_rows:
                boundary += block_rows
                for p in range(n_components):
                    for j in range(n_wavelengths):
                        AtM[p, j] += partial[p, j]
                        partial[p, j] = 0
            continue

        for p in range(n_components):
            if not accumulate[p]:
                continue
            if full_tile:
                a0, a1, a2, a3 = A[start, p], A[start + 1, p], A[start + 2, p], A[start + 3, p]
                for j in range(n_wavelengths):
                    partial[p, j] += a0 * M[start, j] + a1 * M[start + 1, j] + a2 * M[start + 2, j] + a3 * M[start + 3, j]
            else:
                for i in range(start, stop):
                    weight = A[i, p]
                    for j in range(n_wavelengths):
                        partial[p, j] += weight * M[i, j]

        start = stop
        if start == boundary or start == n_rows:
            boundary += block_rows
            for p in range(n_components):
                for j in range(n_wavelengths):
                    AtM[p, j] += partial[p, j]
                    partial[p, j] = 0


def _rows_product(M, W, out, row_offset, block_rows):
    """Add Wᵀ M (q, n_wavelengths) to ``out``, skipping the rows of M where W is zero."""
    n_rows, n_wavelengths = M.shape
    n_columns = W.shape[1]
    partial = np.zeros((n_columns, n_wavelengths), dtype=M.dtype)
    boundary = (row_offset // block_rows + 1) * block_rows - row_offset
    for i in range(n_rows):
        if i == boundary:
            boundary += block_rows
            for p in range(n_columns):
                for j in range(n_wavelengths):
                    out[p, j] += partial[p, j]
                    partial[p, j] = 0
        for p in range(n_columns):
            weight = W[i, p]
            if weight != 0:
                for j in range(n_wavelengths):
                    partial[p, j] += weight * M[i, j]
    for p in range(n_columns):
        for j in range(n_wavelengths):
            out[p, j] += partial[p, j]


def _row_squared_residuals(M, A, S, out):
    """Write ‖M_i − A_i S‖² of every row into ``out`` (n_rows,), forming one row of A S at a time."""
    n_rows, n_wavelengths = M.shape
    n_components = S.shape[0]
    model = np.empty(n_wavelengths, dtype=M.dtype)
    for i in range(n_rows):
        model[:] = 0
        for p in range(n_components):
            weight = A[i, p]
            for j in range(n_wavelengths):
                model[j] += weight * S[p, j]
        total = np.float32(0)
        for j in range(n_wavelengths):
            difference = M[i, j] - model[j]
            total += difference * difference
        out[i] = total


def _threshold_gram(A_work, A, thresholds, columns, AtA):
    """Write the cut A = A_work ∘ (A_work ≥ threshold) and its Gram matrix AᵀA (float64) into ``AtA``.

    A threshold of 0 copies the column. ``columns`` (P, n_rows) receives Aᵀ, so that the Gram sums
    run over contiguous memory. Returns a (2, P) int64 array: the non-zero entries of each column of
    A, and of A_work.
    """
    n_rows, n_components = A_work.shape
    counts = np.zeros((2, n_components), dtype=np.int64)
    for p in range(n_components):
        threshold = thresholds[p]
        kept = 0
        nonzero = 0
        for i in range(n_rows):
            value = A_work[i, p]
            nonzero += value != 0
            if value < threshold:
                value = 0
            A[i, p] = value
            columns[p, i] = value
            kept += value != 0
        counts[0, p] = kept
        counts[1, p] = nonzero
    for p in range(n_components):
        for q in range(p, n_components):
            total = 0.0
            for i in range(n_rows):
                total += np.float64(columns[p, i]) * np.float64(columns[q, i])
            AtA[p, q] = total
            AtA[q, p] = total
    return counts


# Columns of the statistics that _window_scan writes for each scanned column.
SCAN_NONZERO, SCAN_HIGH, SCAN_SUM_HIGH, SCAN_SUM_SQ_HIGH, SCAN_MIN_HIGH, SCAN_MAX_HIGH, SCAN_MAX_LOW, SCAN_WINDOW = range(8)


def _window_scan(matrix, columns, lows, highs, windows, stats):
    """Summarise columns of ``matrix`` around threshold windows [low, high), one column after the other.

    For scanned column k (``matrix[:, columns[k]]``), the positive values in its window go to
    ``windows[k]`` and ``stats[k]`` receives, at the SCAN_* positions: the number of non-zero
    entries, the number ≥ high with their sum, sum of squares, minimum and maximum, the largest
    value below low, and the number of values in the window. Sums are float64.
    """
    n_rows = matrix.shape[0]
    for k in range(columns.size):
        column, low, high = columns[k], lows[k], highs[k]
        # Scalars, not stats[k, ...], so that the sums stay in registers through the loop.
        n_nonzero = 0
        n_high = 0
        n_window = 0
        sum_high = 0.0
        sum_sq_high = 0.0
        min_high = np.inf
        max_high = 0.0
        max_low = 0.0
        for i in range(n_rows):
            value = matrix[i, column]
            # Most entries lie below the window, so that branch comes first and does the least.
            if value < low:
                if value > 0:
                    n_nonzero += 1
                    max_low = max(max_low, np.float64(value))
            elif value >= high:
                value64 = np.float64(value)
                n_high += 1
                sum_high += value64
                sum_sq_high += value64 * value64
                min_high = min(min_high, value64)
                max_high = max(max_high, value64)
            elif value > 0:
                windows[k, n_window] = value
                n_window += 1
        stats[k, SCAN_NONZERO] = n_nonzero + n_high + n_window
        stats[k, SCAN_HIGH] = n_high
        stats[k, SCAN_SUM_HIGH] = sum_high
        stats[k, SCAN_SUM_SQ_HIGH] = sum_sq_high
        stats[k, SCAN_MIN_HIGH] = min_high
        stats[k, SCAN_MAX_HIGH] = max_high
        stats[k, SCAN_MAX_LOW] = max_low
        stats[k, SCAN_WINDOW] = n_window


def _window_select(window, stats, target, length, tie_tolerance):
    """Find the cut closest to a sparsity target among the cuts inside a scanned window.

    ``window`` holds the window's values and ``stats`` the column's statistics from
    :func:`_window_scan`. The steps and the rules (realisable cuts, ties to the denser cut) are
    those of :func:`fluoscan.unmixing.sparsity.sparsity_threshold`;
    :mod:`fluoscan.unmixing.threshold_search` explains why a cut found here is the full sort's.

    Returns (status, entries kept, threshold, largest value, sparsity). Status 1: found, with
    threshold 0 when the cut keeps every non-zero entry; 0: the window does not provably contain
    the cut; 2: the column is zero everywhere.
    """
    root = np.sqrt(length)
    n_window = window.size
    n_nonzero = int(stats[SCAN_NONZERO])
    n_high = int(stats[SCAN_HIGH])
    max_low = stats[SCAN_MAX_LOW]
    peak = max(stats[SCAN_MAX_HIGH], max_low)
    for j in range(n_window):
        peak = max(peak, window[j])
    if n_nonzero == 0:
        return 2, 0, 0.0, 0.0, np.nan

    # Candidate j keeps n_high + j entries: j = 0 cuts at the window's top, j = n_window at its bottom.
    values = np.sort(window)[::-1]
    sparsity = np.empty(n_window + 1)
    total, total_sq = stats[SCAN_SUM_HIGH], stats[SCAN_SUM_SQ_HIGH]
    for j in range(n_window + 1):
        if j > 0:
            total += values[j - 1]
            total_sq += values[j - 1] * values[j - 1]
        sparsity[j] = (root - total / np.sqrt(total_sq)) / (root - 1.0) if total_sq > 0 else np.nan

    # Sparser cuts than the window's top are farther only if that cut is still at or above the target.
    if n_high > 0 and sparsity[0] < target:
        return 0, 0, 0.0, peak, np.nan
    nearest = np.inf
    for j in range(n_window + 1):
        # A cut is realisable where the next value is strictly smaller; both window ends are.
        realisable = n_high > 0 if j == 0 else (j == n_window or values[j - 1] > values[j])
        if realisable and abs(sparsity[j] - target) < nearest:
            nearest = abs(sparsity[j] - target)
    if nearest == np.inf:
        return 0, 0, 0.0, peak, np.nan
    # Denser cuts than the window's bottom are farther only if the next one is already far below the target.
    if n_high + n_window < n_nonzero:
        total += max_low
        total_sq += max_low * max_low
        following = (root - total / np.sqrt(total_sq)) / (root - 1.0)
        if not target - following > nearest + tie_tolerance:
            return 0, 0, 0.0, peak, np.nan

    # Candidates run from sparse to dense, so the last of the closest is the densest cut.
    best = -1
    for j in range(n_window + 1):
        realisable = n_high > 0 if j == 0 else (j == n_window or values[j - 1] > values[j])
        if realisable and abs(sparsity[j] - target) <= nearest + tie_tolerance:
            best = j
    threshold = stats[SCAN_MIN_HIGH] if best == 0 else values[best - 1]
    if n_high + best == n_nonzero:
        threshold = 0.0
    return 1, n_high + best, threshold, peak, sparsity[best]


def _compile_exact(function):
    if not AVAILABLE:
        return None
    # No fastmath: the search compares sums with the full sort's, so it keeps IEEE rounding.
    return njit(nogil=True, cache=True)(function)


frobenius_pass = _compile(_frobenius_pass)
rows_product = _compile(_rows_product)
row_squared_residuals = _compile(_row_squared_residuals)
threshold_gram = _compile(_threshold_gram)
window_scan = _compile_exact(_window_scan)
window_select = _compile_exact(_window_select)
