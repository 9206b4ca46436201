"""Block kernels of the multiplicative updates: each works on any block of rows of M and A.

Shapes: M (n_rows, n_wavelengths) data, A (n_rows, P) weights, S (P, n_wavelengths) spectra.

Their statistics add up over blocks, which is what a block-wise (Dask) backend needs: the S update
reads only AᵀM and AᵀA (or Aᵀ(M ⊘ AS) and the column sums of A), and the A update of a block reads
only that block and S.

The pass kernels at the end (:func:`frobenius_pass`, :func:`rows_product`,
:func:`row_squared_residuals`, :func:`threshold_gram`) have the signatures of the compiled kernels
in :mod:`fluoscan.unmixing.compiled` and run the same steps with BLAS, for when numba is missing.
"""

from __future__ import annotations

from enum import Enum

import numpy as np
from scipy.special import xlogy

# Floor for zero denominators and for AS in the Kullback-Leibler ratio, as in scikit-learn's NMF.
EPSILON = float(np.finfo(np.float32).eps)


class Loss(str, Enum):
    """Objective of the factorization."""

    FROBENIUS = "frobenius"
    KULLBACK_LEIBLER = "kullback-leibler"


def spectra_statistics(
    A: np.ndarray, M: np.ndarray, out: tuple[np.ndarray, np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Compute AᵀM (P, n_wavelengths) and AᵀA (P, P) of a block of rows, in float64.

    The products run in the data's dtype (BLAS); the sums over blocks are accumulated in float64.

    Parameters
    ----------
    A : ndarray of shape (n_rows, P)
    M : ndarray of shape (n_rows, n_wavelengths)
    out : (AtM, AtA), optional
        float64 accumulators that the block's statistics are added to.
    """
    if out is None:
        out = (np.zeros((A.shape[1], M.shape[1])), np.zeros((A.shape[1], A.shape[1])))
    np.add(out[0], A.T @ M, out=out[0])
    np.add(out[1], A.T @ A, out=out[1])
    return out


def update_spectra(S: np.ndarray, AtM: np.ndarray, AtA: np.ndarray, free: np.ndarray | None = None) -> None:
    """Apply the Frobenius update S ← S ∘ (AᵀM) ⊘ (AᵀA S) in place, to the rows in ``free`` only."""
    denominator = AtA @ S.astype(np.float64)
    denominator[denominator == 0] = EPSILON
    ratio = AtM / denominator
    _scale_rows(S, ratio, free)


def update_abundance(
    A: np.ndarray, M: np.ndarray, S: np.ndarray, SSt: np.ndarray, work: tuple[np.ndarray, np.ndarray] | None = None
) -> None:
    """Apply the Frobenius update A ← A ∘ (M Sᵀ) ⊘ (A S Sᵀ) in place to a block of rows.

    ``work`` is a pair of buffers of A's shape and dtype, so that the loop allocates nothing.
    """
    numerator, denominator = work if work is not None else (np.empty_like(A), np.empty_like(A))
    np.matmul(M, S.T, out=numerator)
    np.matmul(A, SSt, out=denominator)
    denominator[denominator == 0] = EPSILON
    np.divide(numerator, denominator, out=numerator)
    np.multiply(A, numerator, out=A)


def frobenius_loss(norm_sq: float, AtM: np.ndarray, AtA: np.ndarray, S: np.ndarray) -> float:
    """Return ‖M − AS‖² = ‖M‖² − 2⟨AᵀM, S⟩ + ⟨AᵀA, S Sᵀ⟩ without forming the residual.

    The three terms nearly cancel for a good fit, so the result is only as precise as AᵀM. With
    float32 products the error reached about 2e-7 ‖M‖² on a 9,025 × 156 cube, as large as the change
    of the loss per iteration; SparseNMF therefore uses this form for float64 data only.
    """
    S = S.astype(np.float64)
    value = norm_sq - 2.0 * float(np.vdot(AtM, S)) + float(np.vdot(AtA, S @ S.T))
    return max(value, 0.0)


def squared_residual(A: np.ndarray, M: np.ndarray, S: np.ndarray, work: np.ndarray | None = None) -> float:
    """Return ‖M − AS‖² of a block of rows, summed per row in the data's dtype and across rows in float64.

    Forming the residual avoids the cancellation of :func:`frobenius_loss`, at the cost of one
    product A S per block. ``work`` is a buffer of M's shape and dtype.
    """
    residual = np.matmul(A, S, out=work)
    np.subtract(M, residual, out=residual)
    return float(np.sum(np.einsum("ij,ij->i", residual, residual), dtype=np.float64))


def kl_statistics(
    A: np.ndarray, M: np.ndarray, S: np.ndarray, work: np.ndarray | None = None, divergence: bool = False
) -> tuple[np.ndarray, np.ndarray, float]:
    """Compute Aᵀ(M ⊘ AS) (P, n_wavelengths), the column sums of A (P,) and optionally D(M‖AS) of a block.

    Returns float64 statistics; the divergence is NaN when ``divergence`` is False. ``work`` is a
    buffer of M's shape and dtype for AS.
    """
    ratio = np.matmul(A, S, out=work)
    np.maximum(ratio, EPSILON, out=ratio)
    value = np.nan
    if divergence:
        value = float(np.sum(ratio, dtype=np.float64)) - float(np.sum(M, dtype=np.float64))
    np.divide(M, ratio, out=ratio)
    if divergence:
        value += float(np.sum(xlogy(M, ratio), dtype=np.float64))
    return (A.T @ ratio).astype(np.float64), np.sum(A, axis=0, dtype=np.float64), value


def update_spectra_kl(S: np.ndarray, AtR: np.ndarray, A_sum: np.ndarray, free: np.ndarray | None = None) -> None:
    """Apply the Kullback-Leibler update S ← S ∘ (Aᵀ(M ⊘ AS)) ⊘ (Aᵀ1) in place, to the rows in ``free`` only."""
    denominator = np.where(A_sum == 0, EPSILON, A_sum)
    _scale_rows(S, AtR / denominator[:, None], free)


def update_abundance_kl(A: np.ndarray, M: np.ndarray, S: np.ndarray, work: np.ndarray | None = None) -> None:
    """Apply the Kullback-Leibler update A ← A ∘ ((M ⊘ AS) Sᵀ) ⊘ (1 Sᵀ) in place to a block of rows."""
    ratio = np.matmul(A, S, out=work)
    np.maximum(ratio, EPSILON, out=ratio)
    np.divide(M, ratio, out=ratio)
    numerator = ratio @ S.T
    denominator = S.sum(axis=1)
    denominator[denominator == 0] = EPSILON
    numerator /= denominator
    np.multiply(A, numerator, out=A)


def _scale_rows(S: np.ndarray, ratio: np.ndarray, free: np.ndarray | None) -> None:
    if free is None:
        S *= ratio.astype(S.dtype)
    else:
        S[free] *= ratio[free].astype(S.dtype)


def _row_blocks(n_rows: int, block_rows: int) -> list[slice]:
    return [slice(start, min(start + block_rows, n_rows)) for start in range(0, n_rows, block_rows)]


def _gram(A: np.ndarray) -> np.ndarray:
    # Accumulated in A's dtype: the S update needs no more, and the loss uses AᵀA only for float64 data.
    return (A.T @ A).astype(np.float64)


# ---------------------------------------------------------------------- pass kernels (BLAS)


def _aligned_blocks(n_rows: int, row_offset: int, block_rows: int) -> list[slice]:
    """Split rows [0, n_rows) at the multiples of ``block_rows`` counted from global row ``row_offset``."""
    first = min(n_rows, (row_offset // block_rows + 1) * block_rows - row_offset)
    starts = [0, *range(first, n_rows, block_rows)] if first < n_rows else [0]
    return [slice(start, min(stop, n_rows)) for start, stop in zip(starts, [*starts[1:], n_rows])]


def frobenius_pass(
    M: np.ndarray,
    A: np.ndarray,
    S: np.ndarray,
    SSt: np.ndarray,
    AtM: np.ndarray,
    accumulate: np.ndarray,
    row_offset: int,
    block_rows: int,
) -> None:
    """Update A ← A ∘ (M Sᵀ) ⊘ (A SSᵀ) in place and add the new AᵀM of the ``accumulate`` columns to ``AtM``."""
    work = (np.empty((block_rows, A.shape[1]), A.dtype), np.empty((block_rows, A.shape[1]), A.dtype))
    for rows in _aligned_blocks(M.shape[0], row_offset, block_rows):
        size = rows.stop - rows.start
        update_abundance(A[rows], M[rows], S, SSt, work=(work[0][:size], work[1][:size]))
        AtM[accumulate] += A[rows][:, accumulate].T @ M[rows]


def rows_product(M: np.ndarray, W: np.ndarray, out: np.ndarray, row_offset: int, block_rows: int) -> None:
    """Add Wᵀ M (q, n_wavelengths) to ``out``, reading only the blocks where W is non-zero."""
    for rows in _aligned_blocks(M.shape[0], row_offset, block_rows):
        if W[rows].any():
            out += W[rows].T @ M[rows]


def row_squared_residuals(M: np.ndarray, A: np.ndarray, S: np.ndarray, out: np.ndarray) -> None:
    """Write ‖M_i − A_i S‖² of every row into ``out`` (n_rows,)."""
    for rows in _row_blocks(M.shape[0], 256):
        residual = M[rows] - A[rows] @ S
        out[rows] = np.einsum("ij,ij->i", residual, residual)


def threshold_gram(
    A_work: np.ndarray, A: np.ndarray, thresholds: np.ndarray, columns: np.ndarray, AtA: np.ndarray
) -> np.ndarray:
    """Write the cut A = A_work ∘ (A_work ≥ threshold) and AᵀA (float64) into ``AtA``; return the non-zero counts of A and A_work."""
    np.multiply(A_work, A_work >= thresholds, out=A)
    AtA[...] = _gram(A)
    return np.stack([np.count_nonzero(A, axis=0), np.count_nonzero(A_work, axis=0)])
