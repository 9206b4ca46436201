"""Sparse non-negative matrix factorization M ≈ A S by multiplicative updates.

Shapes, used throughout: M (n_pixels, n_wavelengths) is the data, A (n_pixels, P) the weights
(abundance maps, one column per component) and S (P, n_wavelengths) the spectra.

Each iteration updates S, then A (Lee and Seung's rules):

    Frobenius ‖M − AS‖²:     S ← S ∘ (AᵀM) ⊘ (AᵀA S)          A ← A ∘ (M Sᵀ) ⊘ (A S Sᵀ)
    Kullback-Leibler D(M‖AS): S ← S ∘ (Aᵀ(M ⊘ AS)) ⊘ (Aᵀ1)     A ← A ∘ ((M ⊘ AS) Sᵀ) ⊘ (1 Sᵀ)

After each A update, every column with a sparsity target is hard-thresholded
(:mod:`fluoscan.unmixing.sparsity`). A multiplicative update never turns a zero back into a
non-zero value, so the updates act on an unthresholded working copy ``A_work`` and only the
thresholded copy ``A`` feeds the S update, the loss and the output. A pixel cut by an early,
wrong threshold stays alive in ``A_work`` and comes back once its weight rises above the cut.

The block kernels below work on any block of rows of M and A. Their statistics add up over blocks,
which is what a block-wise (Dask) backend needs: the S update reads only AᵀM and AᵀA (or Aᵀ(M ⊘ AS)
and the column sums of A), and the A update of a block reads only that block and S.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

import numpy as np
from scipy.special import xlogy

from fluoscan.unmixing.init import endmember_spectra, mean_spectrum
from fluoscan.unmixing.sparsity import Threshold, hoyer_sparsity, threshold_columns

log = logging.getLogger(__name__)

# Floor for zero denominators and for AS in the Kullback-Leibler ratio, as in scikit-learn's NMF.
EPSILON = float(np.finfo(np.float32).eps)
# Rows per block are chosen so that one block of M (512 KiB) stays in a core's cache between the two
# products that read it. Measured on 65,536 x 512 float32 with 2 cores: 256-row blocks ran 1.2 to
# 2 times faster than 1,024 or 4,096 rows, with one thread or one per core.
_BLOCK_BYTES = 512 * 1024
# Most pixel indices that one error or log message lists.
_SHOWN_PIXELS = 5


class Loss(str, Enum):
    """Objective of the factorization."""

    FROBENIUS = "frobenius"
    KULLBACK_LEIBLER = "kullback-leibler"


class ConvergenceWarning(UserWarning):
    """The fit reached ``max_iter`` before the loss settled to within ``tol``."""


class DataWarning(UserWarning):
    """Input values were clipped or pixels were excluded from the fit."""


# ---------------------------------------------------------------------- block kernels


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


def _kept_rows_product(A_columns: np.ndarray, M: np.ndarray, block_rows: int) -> np.ndarray:
    """Return A_columnsᵀ M in float64, reading only the rows of M where a column is non-zero."""
    product = np.zeros((A_columns.shape[1], M.shape[1]))
    rows = np.flatnonzero(np.any(A_columns != 0, axis=1))
    if rows.size > M.shape[0] // 2:
        for block in _row_blocks(M.shape[0], block_rows):
            np.add(product, A_columns[block].T @ M[block], out=product)
        return product
    for start in range(0, rows.size, block_rows):
        index = rows[start : start + block_rows]
        np.add(product, A_columns[index].T @ M[index], out=product)
    return product


# ---------------------------------------------------------------------- the update loop


@dataclass
class _LoopResult:
    A: np.ndarray
    loss_history: list[float]
    n_iter: int
    converged: bool
    cuts: list[Threshold | None]
    n_zeroed: np.ndarray
    seconds: float = 0.0
    iterations_timed: int = 0


@dataclass
class _LoopSettings:
    loss: Loss
    rules: list[float | str | None]
    free: np.ndarray | None
    update_spectra: bool
    max_iter: int
    tol: float
    loss_every: int
    block_rows: int
    n_threads: int = 1
    # The Frobenius loss from Gram matrices is exact enough only in float64 (see frobenius_loss).
    gram_loss: bool = True
    norm_sq: float = 0.0
    column_sums: np.ndarray | None = field(default=None, repr=False)
    initial_statistics: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


@dataclass
class _Stripe:
    """A contiguous range of row blocks that one thread processes, with its own work buffers."""

    blocks: list[slice]
    ratio: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray


class _Updater:
    """The update loop over one data matrix, with A_work, the thresholded A, S and the reductions.

    The rows are split into one stripe per thread. Each pass over M runs the stripes in parallel
    (BLAS releases the GIL) and adds up their partial reductions.
    """

    def __init__(self, M: np.ndarray, A_work: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> None:
        self.M, self.A_work, self.S, self.settings = M, A_work, S, settings
        n_pixels, n_components = A_work.shape
        self.targeted = [p for p, rule in enumerate(settings.rules) if rule is not None]
        self.frobenius = settings.loss is Loss.FROBENIUS

        self.A = np.empty_like(A_work) if self.targeted else A_work
        self.cuts: list[Threshold | None] = [None] * n_components
        self.n_zeroed = np.zeros(n_components, dtype=np.int64)
        if self.targeted:
            self.cuts, self.n_zeroed = threshold_columns(A_work, settings.rules, out=self.A)

        blocks = _row_blocks(n_pixels, settings.block_rows)
        block_size = blocks[0].stop - blocks[0].start
        n_stripes = max(1, min(settings.n_threads, len(blocks)))
        self.stripes = []
        for group in np.array_split(np.arange(len(blocks)), n_stripes):
            self.stripes.append(
                _Stripe(
                    blocks=[blocks[i] for i in group],
                    ratio=np.empty((block_size, M.shape[1]), M.dtype),
                    numerator=np.empty((block_size, n_components), M.dtype),
                    denominator=np.empty((block_size, n_components), M.dtype),
                )
            )
        self.pool: ThreadPoolExecutor | None = None

        if not self.frobenius:
            return
        self.AtM = np.zeros((n_components, M.shape[1]))
        if settings.initial_statistics is not None and not self.targeted:
            self.AtM[...], self.AtA = settings.initial_statistics[0], settings.initial_statistics[1].copy()
        else:
            for part in self._map(self._stripe_spectra_statistics):
                self.AtM += part
            self.AtA = _gram(self.A)

    def run(self) -> _LoopResult:
        if len(self.stripes) == 1:
            return self._iterate()
        with ThreadPoolExecutor(len(self.stripes), thread_name_prefix="sparse-nmf") as pool, _single_threaded_blas():
            self.pool = pool
            try:
                return self._iterate()
            finally:
                self.pool = None

    def _map(self, work: Any) -> list[Any]:
        if self.pool is None:
            return [work(stripe) for stripe in self.stripes]
        return list(self.pool.map(work, self.stripes))

    def _iterate(self) -> _LoopResult:
        settings = self.settings
        history: list[float] = []
        checked_at: list[int] = []
        converged = False
        started = time.perf_counter()
        for iteration in range(settings.max_iter + 1):
            check = iteration % settings.loss_every == 0 or iteration == settings.max_iter
            if self.frobenius:
                if check:
                    history.append(self.frobenius_loss())
            else:
                divergence = self.kl_statistics(divergence=check)
                if check:
                    history.append(divergence)
            if check:
                checked_at.append(iteration)
                if len(history) > 1 and settings.tol > 0:
                    # Average relative change per iteration since the previous evaluation.
                    change = abs(history[-2] - history[-1]) / (checked_at[-1] - checked_at[-2])
                    if change <= settings.tol * history[-2]:
                        converged = True
                        break
                if iteration % (50 * settings.loss_every) == 0:
                    log.debug("iteration %d: loss %.6g", iteration, history[-1])
            if iteration == settings.max_iter:
                break

            if settings.update_spectra:
                if self.frobenius:
                    update_spectra(self.S, self.AtM, self.AtA, settings.free)
                else:
                    update_spectra_kl(self.S, self.AtR, self.A_sum, settings.free)
            self.update_abundance()
            if self.targeted:
                self.cuts, self.n_zeroed = threshold_columns(self.A_work, settings.rules, out=self.A)
                if self.frobenius:
                    self.AtM[self.targeted] = _kept_rows_product(self.A[:, self.targeted], self.M, settings.block_rows)
            if self.frobenius:
                self.AtA = _gram(self.A)

        return _LoopResult(
            A=self.A,
            loss_history=history,
            n_iter=iteration,
            converged=converged,
            cuts=self.cuts,
            n_zeroed=self.n_zeroed,
            seconds=time.perf_counter() - started,
            iterations_timed=iteration,
        )

    # ------------------------------------------------------------------ passes over M

    def frobenius_loss(self) -> float:
        if self.settings.gram_loss:
            return frobenius_loss(self.settings.norm_sq, self.AtM, self.AtA, self.S)
        return float(sum(self._map(self._stripe_squared_residual)))

    def kl_statistics(self, divergence: bool) -> float:
        """Reduce Aᵀ(M ⊘ AS) and the column sums of A over the stripes; return D(M‖AS) when asked."""
        self.AtR = np.zeros(self.S.shape)
        self.A_sum = np.zeros(self.S.shape[0])
        total = 0.0
        for AtR, A_sum, value in self._map(lambda stripe: self._stripe_kl_statistics(stripe, divergence)):
            self.AtR += AtR
            self.A_sum += A_sum
            total += value
        return max(total, 0.0)

    def update_abundance(self) -> None:
        if not self.frobenius:
            self._map(self._stripe_update_abundance_kl)
            return
        # One pass over M: each block's A update and its share of AᵀM read the block while it is in cache.
        self.SSt = self.S @ self.S.T
        self.AtM[...] = 0.0
        for part in self._map(self._stripe_update_abundance):
            self.AtM += part

    def _stripe_spectra_statistics(self, stripe: _Stripe) -> np.ndarray:
        AtM = np.zeros(self.AtM.shape)
        for rows in stripe.blocks:
            np.add(AtM, self.A[rows].T @ self.M[rows], out=AtM)
        return AtM

    def _stripe_update_abundance(self, stripe: _Stripe) -> np.ndarray:
        AtM = np.zeros(self.AtM.shape)
        for rows in stripe.blocks:
            size = rows.stop - rows.start
            work = (stripe.numerator[:size], stripe.denominator[:size])
            update_abundance(self.A_work[rows], self.M[rows], self.S, self.SSt, work=work)
            np.add(AtM, self.A_work[rows].T @ self.M[rows], out=AtM)
        return AtM

    def _stripe_squared_residual(self, stripe: _Stripe) -> float:
        return sum(
            squared_residual(self.A[rows], self.M[rows], self.S, stripe.ratio[: rows.stop - rows.start])
            for rows in stripe.blocks
        )

    def _stripe_kl_statistics(self, stripe: _Stripe, divergence: bool) -> tuple[np.ndarray, np.ndarray, float]:
        AtR, A_sum, total = np.zeros(self.S.shape), np.zeros(self.S.shape[0]), 0.0
        for rows in stripe.blocks:
            block_AtR, block_sum, value = kl_statistics(
                self.A[rows], self.M[rows], self.S, stripe.ratio[: rows.stop - rows.start], divergence=divergence
            )
            AtR += block_AtR
            A_sum += block_sum
            total += value
        return AtR, A_sum, total

    def _stripe_update_abundance_kl(self, stripe: _Stripe) -> None:
        for rows in stripe.blocks:
            update_abundance_kl(self.A_work[rows], self.M[rows], self.S, stripe.ratio[: rows.stop - rows.start])


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while the stripes run in parallel.

    Without the limit, every stripe's BLAS call would start its own threads and oversubscribe the cores.
    NOTE: this needs threadpoolctl (installed with scikit-learn). Without it BLAS keeps its own
    threads, and the parallel passes may run slower than one thread.
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        log.debug("threadpoolctl is not installed; BLAS keeps its own threads during parallel passes")
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _run_updates(M: np.ndarray, A_work: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> _LoopResult:
    """Iterate the updates on ``A_work`` and ``S`` in place; return the thresholded A and the loss history."""
    return _Updater(M, A_work, S, settings).run()


# ---------------------------------------------------------------------- input checks


@dataclass
class _PreparedData:
    """The rows that enter the fit and what was done to the input to get them."""

    M: np.ndarray
    fit_rows: np.ndarray | None
    masked_rows: np.ndarray
    masked_data: np.ndarray
    masked_weights: np.ndarray | None
    n_clipped: int


def _as_float_matrix(M: Any, name: str = "M") -> np.ndarray:
    M = np.asarray(M)
    if M.ndim != 2:
        raise ValueError(
            f"{name} must be a 2-D array (n_pixels, n_wavelengths), got shape {M.shape}; "
            "reshape a cube with cube.reshape(-1, n_wavelengths)"
        )
    if M.dtype not in (np.float32, np.float64):
        if not (np.issubdtype(M.dtype, np.number) or M.dtype == np.bool_):
            raise ValueError(f"{name} must hold numbers, got dtype {M.dtype}")
        M = M.astype(np.float64)
    # Row blocks of a C-ordered array are contiguous, which the BLAS calls of the loop need to run fast.
    return np.ascontiguousarray(M)


def _check_finite(M: np.ndarray, name: str = "M") -> None:
    # A float64 sum is finite exactly when every entry is, barring overflow beyond 1e308.
    if np.isfinite(np.sum(M, dtype=np.float64)):
        return
    bad = ~np.isfinite(M)
    pixels = np.flatnonzero(bad.any(axis=1))
    if pixels.size == 0:
        return
    first_pixels = ", ".join(str(p) for p in pixels[:_SHOWN_PIXELS])
    more = ", ..." if pixels.size > _SHOWN_PIXELS else ""
    raise ValueError(
        f"{name} contains {int(bad.sum())} NaN or infinite values in {pixels.size} pixels "
        f"(pixel indices {first_pixels}{more}); remove or repair those pixels before unmixing"
    )


def _saturation_masks(M: np.ndarray, saturation: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Return (pixel mask, entry mask) for the ``saturation`` argument of fit."""
    if saturation is None:
        return None, None
    if np.isscalar(saturation):
        if isinstance(saturation, bool) or not np.isfinite(saturation):
            raise ValueError(f"saturation must be a finite number or a boolean mask, got {saturation!r}")
        entries = M >= saturation
        return entries.any(axis=1), entries
    mask = np.asarray(saturation)
    if mask.dtype != np.bool_:
        raise ValueError(f"a saturation mask must be boolean, got dtype {mask.dtype}")
    if mask.shape == (M.shape[0],):
        return mask, None
    if mask.shape == M.shape:
        return mask.any(axis=1), mask
    raise ValueError(
        f"saturation mask has shape {mask.shape}; expected (n_pixels,) = ({M.shape[0]},) or M's shape {M.shape}"
    )


def _prepare_data(M: np.ndarray, saturation: Any) -> _PreparedData:
    """Clip negative values and set the saturated pixels apart, copying each row of M at most once."""
    n_negative = int(np.count_nonzero(M < 0)) if M.min(initial=0) < 0 else 0
    pixel_mask, entry_mask = _saturation_masks(M, saturation)
    if n_negative:
        message = (
            f"{n_negative} negative values in the data (e.g. after dark subtraction) were clipped to 0 "
            "because NMF needs non-negative data"
        )
        warnings.warn(message, DataWarning, stacklevel=4)

    if pixel_mask is None or not pixel_mask.any():
        fitted = np.maximum(M, 0) if n_negative else M
        return _PreparedData(fitted, None, np.empty(0, np.intp), M[:0], None, n_negative)

    fit_rows = np.flatnonzero(~pixel_mask)
    masked_rows = np.flatnonzero(pixel_mask)
    if fit_rows.size < 2:
        raise ValueError(
            f"{masked_rows.size} of {M.shape[0]} pixels are saturated, which leaves too few to fit; "
            "shorten the exposure or lower the laser power"
        )
    message = (
        f"{masked_rows.size} saturated pixels (of {M.shape[0]}) were left out of the fit; "
        "their weights are estimated afterwards from their unsaturated wavelengths"
    )
    warnings.warn(message, DataWarning, stacklevel=4)
    fitted = M[fit_rows]
    np.maximum(fitted, 0, out=fitted)
    masked = np.maximum(M[masked_rows], 0)
    weights = None if entry_mask is None else (~entry_mask[masked_rows]).astype(M.dtype)
    return _PreparedData(fitted, fit_rows, masked_rows, masked, weights, n_negative)


def _data_moments(M: np.ndarray, blocks: list[slice]) -> tuple[float, np.ndarray]:
    """Return ‖M‖² and the column sums of M, accumulated in float64."""
    norm_sq = 0.0
    column_sums = np.zeros(M.shape[1])
    for rows in blocks:
        block = M[rows]
        norm_sq += float(np.einsum("ij,ij->", block, block, dtype=np.float64))
        column_sums += np.sum(block, axis=0, dtype=np.float64)
    return norm_sq, column_sums


def _check_spectra_init(
    spectra: Any, n_components: int, n_wavelengths: int, rules: list[Any], fixed: np.ndarray, names: list[str]
) -> np.ndarray:
    spectra = np.asarray(spectra, dtype=np.float64)
    if spectra.shape != (n_components, n_wavelengths):
        raise ValueError(
            f"spectra_init has shape {spectra.shape}; expected (n_components, n_wavelengths) = "
            f"({n_components}, {n_wavelengths})"
        )
    if not np.all(np.isfinite(spectra)) or np.any(spectra < 0):
        raise ValueError("spectra_init must be finite and non-negative")
    zero = [names[p] for p in range(n_components) if not spectra[p].any()]
    if zero:
        raise ValueError(f"initial spectra of {zero} are zero everywhere; a multiplicative update cannot move them")

    # Identical rows stay identical under the updates unless their constraints differ.
    unit = spectra / np.linalg.norm(spectra, axis=1, keepdims=True)
    distinct: list[int] = []
    for p in range(n_components):
        twin = next((q for q in distinct if np.allclose(unit[p], unit[q], rtol=0, atol=1e-9)), None)
        if twin is None:
            distinct.append(p)
        elif rules[p] == rules[twin] and fixed[p] == fixed[twin]:
            raise ValueError(
                f"components {names[twin]!r} and {names[p]!r} start from the same spectrum with the same "
                "constraints, so the updates would keep them identical; give one of them another initial spectrum"
            )
        else:
            log.info("%r and %r start from the same spectrum; their sparsity targets separate them", names[twin], names[p])
    rank = np.linalg.matrix_rank(unit[distinct])
    if rank < len(distinct):
        raise ValueError(
            f"the initial spectra are linearly dependent (rank {rank} for {len(distinct)} distinct spectra); "
            "use fewer components or other initial spectra"
        )
    return spectra


# ---------------------------------------------------------------------- the estimator

_INIT_METHODS = ("spa", "mean", "random")
_ABUNDANCE_STARTS = ("constant", "lstsq")
# A least-squares start is clipped at this fraction of its maximum: a multiplicative update cannot
# move an entry that starts at 0.
_LSTSQ_FLOOR = 1e-6


class SparseNMF:
    """Non-negative matrix factorization M ≈ A S with per-component sparsity targets on A.

    Fits weights A (n_pixels, n_components) and spectra S (n_components, n_wavelengths) by
    multiplicative updates, S first, then A, each iteration. After each A update, every column with
    a sparsity target is hard-thresholded: entries below ``max / β`` are set to 0, with β chosen
    exactly so that the column's Hoyer sparsity is as close as possible to its target.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of components P. None takes it from ``components``, ``sparsity``, ``fixed_spectra``
        or the ``spectra_init`` given to :meth:`fit`.
    sparsity : float, "auto", None or sequence of these, default=None
        Hoyer sparsity target in [0, 1] of each component's weight column; None for no constraint;
        ``"auto"`` thresholds at the column's noise floor (median + 3 robust standard deviations).
        A single value applies to every component.
    components : sequence of str, optional
        Component names, e.g. ``["autofluorescence", "icg_lnp", "af750"]``.
        Default ``component_0``, ``component_1``, ...
    loss : {"frobenius", "kullback-leibler"}, default="frobenius"
        Objective: ‖M − AS‖²_F or the generalised Kullback-Leibler divergence D(M‖AS).
    max_iter : int, default=500
        Maximum number of iterations.
    tol : float, default=1e-5
        The fit stops when the loss changes, on average per iteration since its previous
        evaluation, by less than ``tol`` times its previous value. The change is taken in absolute
        value because a threshold step can raise the loss. 0 runs ``max_iter`` iterations.
    fixed_spectra : sequence of bool, or of component names or indices, optional
        Components whose spectra stay at their initial value (known dye spectra).
    init : {"spa", "mean", "random"}, default="spa"
        Initial spectra when :meth:`fit` gets no ``spectra_init``. "spa": the data's purest pixels,
        picked by the successive projection algorithm (deterministic). "mean": the data's mean
        spectrum, usable for one component or for components with different sparsity targets.
        "random": the mean spectrum times uniform random factors in [0.5, 1.5) from ``random_state``.
    abundance_start : {"constant", "lstsq"}, default="constant"
        Initial weights when :meth:`fit` gets no ``abundance_init``. "constant": one positive
        constant, the least-squares scale of the initial spectra's sum to the data (the published
        method). "lstsq": the least-squares weights for the initial spectra, clipped at 1e-6 of
        their maximum. The first S update from constant weights pulls every spectrum towards the
        data's mean shape, so "lstsq" keeps good data-derived spectra (``init="spa"``) where they are.
    random_state : int, numpy.random.Generator or None, default=None
        Seed of the "random" initialisation. Every other step is deterministic.
    loss_every : int or None, default=None
        Iterations between loss evaluations. None: 1 for the Frobenius loss on float64 data, which
        comes from Gram matrices at no cost, else 10. On float32 data the Gram matrices lose too
        much precision, so the Frobenius loss is computed from the residual, one pass over M; the
        Kullback-Leibler loss costs a logarithm per entry.
    block_rows : int or None, default=None
        Rows of M per block in the update loop; None sizes a block to 512 KiB.
    n_jobs : int or None, default=None
        Threads that run the passes over M, each on its own stripe of rows with single-threaded
        BLAS. None or -1: one per CPU core. 1: the calling thread alone, with BLAS using its own
        threads. On 65,536 × 512 × 3 float32 with 2 cores, one thread per core ran 1.4 to 1.8 times
        faster per iteration than BLAS threads. The stripes' sums are added in a fixed order, so a
        fit repeats exactly with the same number of threads; another number changes the rounding.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_wavelengths)
        Fitted spectra S. Free spectra are scaled to a peak of 1 and A carries their intensity;
        fixed spectra keep the scale they were given.
    n_components_ : int
    component_names_ : list of str
    spectra_init_ : ndarray of shape (n_components, n_wavelengths)
        Initial spectra, in the data's dtype.
    n_iter_ : int
        Iterations run.
    converged_ : bool
        Whether the loss settled to within ``tol`` before ``max_iter``.
    loss_history_ : ndarray
        Loss before the first iteration and after every ``loss_every`` iterations (and after the last).
        Frobenius: ‖M − AS‖²_F; Kullback-Leibler: D(M‖AS). Saturated pixels are not included.
    loss_every_ : int
        Iterations between two entries of ``loss_history_``.
    reconstruction_err_ : float
        ‖M − AS‖_F for the Frobenius loss, D(M‖AS) for Kullback-Leibler, over the fitted pixels.
    sparsity_target_ : list of float, "auto" or None
    sparsity_ : ndarray of shape (n_components,)
        Hoyer sparsity reached by each weight column; NaN for components without a target.
    n_zeroed_ : ndarray of shape (n_components,)
        Entries set to 0 by the last threshold step in each column.
    thresholds_ : list of Threshold or None
        Last cut of each column (threshold value, β, entries kept).
    fixed_ : ndarray of shape (n_components,), bool
    n_clipped_ : int
        Negative data values clipped to 0.
    saturated_pixels_ : ndarray of shape (n_pixels,), bool
        Pixels left out of the fit because they are saturated.
    n_features_in_ : int
        Number of wavelengths seen in fit.
    seconds_per_iter_ : float
        Wall time per iteration of the update loop.
    """

    def __init__(
        self,
        n_components: int | None = None,
        *,
        sparsity: float | str | Sequence[float | str | None] | None = None,
        components: Sequence[str] | None = None,
        loss: str = "frobenius",
        max_iter: int = 500,
        tol: float = 1e-5,
        fixed_spectra: Sequence[bool] | Sequence[str | int] | None = None,
        init: str = "spa",
        abundance_start: str = "constant",
        random_state: int | np.random.Generator | None = None,
        loss_every: int | None = None,
        block_rows: int | None = None,
        n_jobs: int | None = None,
    ) -> None:
        self.n_components = n_components
        self.sparsity = sparsity
        self.components = components
        self.loss = loss
        self.max_iter = max_iter
        self.tol = tol
        self.fixed_spectra = fixed_spectra
        self.init = init
        self.abundance_start = abundance_start
        self.random_state = random_state
        self.loss_every = loss_every
        self.block_rows = block_rows
        self.n_jobs = n_jobs

    def get_params(self) -> dict[str, Any]:
        """Return the constructor parameters."""
        names = ("n_components", "sparsity", "components", "loss", "max_iter", "tol", "fixed_spectra", "init",
                 "abundance_start", "random_state", "loss_every", "block_rows", "n_jobs")  # fmt: skip
        return {name: getattr(self, name) for name in names}

    def __repr__(self) -> str:
        changed = {key: value for key, value in self.get_params().items() if value != _DEFAULTS[key]}
        return f"SparseNMF({', '.join(f'{key}={value!r}' for key, value in changed.items())})"

    # ------------------------------------------------------------------ parameters

    def _n_components(self, spectra_init: Any) -> int:
        counts: dict[str, int] = {}
        if self.n_components is not None:
            if isinstance(self.n_components, bool) or not isinstance(self.n_components, (int, np.integer)) or self.n_components < 1:
                raise ValueError(f"n_components must be a positive integer or None, got {self.n_components!r}")
            counts["n_components"] = int(self.n_components)
        if self.components is not None:
            counts["components"] = len(self.components)
        if _is_sequence(self.sparsity):
            counts["sparsity"] = len(self.sparsity)
        if self.fixed_spectra is not None and all(isinstance(flag, (bool, np.bool_)) for flag in self.fixed_spectra):
            counts["fixed_spectra"] = len(self.fixed_spectra)
        if spectra_init is not None:
            counts["spectra_init"] = int(np.shape(spectra_init)[0])
        if not counts:
            raise ValueError("the number of components is unknown: give n_components, components or spectra_init")
        if len(set(counts.values())) > 1:
            sources = ", ".join(f"{key} gives {count}" for key, count in counts.items())
            raise ValueError(f"inconsistent number of components: {sources}")
        return next(iter(counts.values()))

    def _validate(self, spectra_init: Any) -> tuple[int, list[str], list[Any], np.ndarray, Loss]:
        n_components = self._n_components(spectra_init)
        names = [f"component_{p}" for p in range(n_components)] if self.components is None else [str(c) for c in self.components]
        if len(set(names)) != len(names):
            raise ValueError(f"component names must be unique, got {names}")

        rules = list(self.sparsity) if _is_sequence(self.sparsity) else [self.sparsity] * n_components
        for p, rule in enumerate(rules):
            if rule is None or rule == "auto":
                continue
            if isinstance(rule, (bool, str)) or not isinstance(rule, (int, float, np.floating, np.integer)) or not 0 <= rule <= 1:
                raise ValueError(f'sparsity of {names[p]!r} must be a number in [0, 1], "auto" or None, got {rule!r}')
            rules[p] = float(rule)

        fixed = np.zeros(n_components, dtype=bool)
        for item in self.fixed_spectra or ():
            if isinstance(item, (bool, np.bool_)):
                fixed = np.asarray(self.fixed_spectra, dtype=bool)
                break
            if isinstance(item, str) and item in names:
                fixed[names.index(item)] = True
            elif isinstance(item, (int, np.integer)) and 0 <= item < n_components:
                fixed[int(item)] = True
            else:
                raise ValueError(f"fixed_spectra names unknown component {item!r}; components are {names}")

        try:
            loss = Loss(self.loss)
        except ValueError:
            allowed = ", ".join(repr(item.value) for item in Loss)
            raise ValueError(f"loss must be one of {allowed}, got {self.loss!r}") from None
        for name, value, low in (("max_iter", self.max_iter, 1), ("loss_every", self.loss_every, 1), ("block_rows", self.block_rows, 1)):
            if value is None and name != "max_iter":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.n_jobs is not None and (
            isinstance(self.n_jobs, bool) or not isinstance(self.n_jobs, (int, np.integer)) or not (self.n_jobs >= 1 or self.n_jobs == -1)
        ):
            raise ValueError(f"n_jobs must be a positive integer, -1 (one per core) or None, got {self.n_jobs!r}")
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float, np.floating)) or not self.tol >= 0:
            raise ValueError(f"tol must be a number >= 0, got {self.tol!r}")
        if self.init not in _INIT_METHODS:
            raise ValueError(f"init must be one of {', '.join(map(repr, _INIT_METHODS))}, got {self.init!r}")
        if self.abundance_start not in _ABUNDANCE_STARTS:
            raise ValueError(
                f"abundance_start must be one of {', '.join(map(repr, _ABUNDANCE_STARTS))}, got {self.abundance_start!r}"
            )
        return n_components, names, rules, fixed, loss

    def _n_threads(self) -> int:
        if self.n_jobs is None or self.n_jobs == -1:
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return int(self.n_jobs)

    def _block_rows(self, n_wavelengths: int, itemsize: int) -> int:
        if self.block_rows:
            return int(self.block_rows)
        return max(64, _BLOCK_BYTES // (n_wavelengths * itemsize))

    # ------------------------------------------------------------------ fitting

    def fit(
        self, M: Any, spectra_init: Any = None, *, abundance_init: Any = None, saturation: Any = None
    ) -> SparseNMF:
        """Fit A and S to the data.

        Parameters
        ----------
        M : array_like of shape (n_pixels, n_wavelengths)
            Non-negative data, e.g. a cube minus its dark frame reshaped to (Ny·Nx, Nλ). float32 and
            float64 are kept as given; other dtypes become float64. Negative values are clipped to 0
            with a :class:`DataWarning`.
        spectra_init : array_like of shape (n_components, n_wavelengths), optional
            Initial spectra S. Default: from ``init``.
        abundance_init : array_like of shape (n_pixels, n_components), optional
            Initial weights A. Default: one positive constant, the least-squares scale of the
            initial spectra's sum to the data.
        saturation : float or bool array, optional
            A value at or above which an entry is saturated, or a mask of saturated pixels
            (n_pixels,) or entries (n_pixels, n_wavelengths). Saturated pixels are left out of the
            fit; their weights are estimated afterwards with S fixed, from their unsaturated entries.

        Returns
        -------
        self
        """
        self._fit(M, spectra_init, abundance_init, saturation)
        return self

    def fit_transform(
        self, M: Any, spectra_init: Any = None, *, abundance_init: Any = None, saturation: Any = None
    ) -> np.ndarray:
        """Fit the model and return the weights A, of shape (n_pixels, n_components).

        The arguments are those of :meth:`fit`.
        """
        return self._fit(M, spectra_init, abundance_init, saturation)

    def transform(self, M: Any) -> np.ndarray:
        """Compute the weights A for new data with the fitted spectra held fixed.

        The same sparsity rules, ``max_iter`` and ``tol`` apply as in :meth:`fit`.

        Returns
        -------
        ndarray of shape (n_pixels, n_components)
        """
        if not hasattr(self, "components_"):
            raise RuntimeError("this SparseNMF is not fitted yet; call fit or fit_transform first")
        M = _as_float_matrix(M)
        if M.shape[1] != self.n_features_in_:
            raise ValueError(f"M has {M.shape[1]} wavelengths, the model was fitted on {self.n_features_in_}")
        _check_finite(M)
        prepared = _prepare_data(M, None)
        _, _, rules, _, loss = self._validate(self.components_)
        S = self.components_.astype(M.dtype)
        settings = self._settings(prepared.M, loss, rules, None, update_spectra=False)
        A_work = _constant_abundance(prepared.M, S, settings)
        result = _run_updates(prepared.M, A_work, S, settings)
        self._warn_if_not_converged(result, stacklevel=3)
        return result.A

    def _settings(
        self, M: np.ndarray, loss: Loss, rules: list[Any], free: np.ndarray | None, update_spectra: bool
    ) -> _LoopSettings:
        block_rows = self._block_rows(M.shape[1], M.dtype.itemsize)
        # The loss from Gram matrices costs nothing but is exact enough only in float64; the other
        # losses cost a pass over M, so they are evaluated every 10 iterations by default.
        gram_loss = loss is Loss.FROBENIUS and M.dtype == np.float64
        loss_every = self.loss_every or (1 if gram_loss else 10)
        norm_sq, column_sums = _data_moments(M, _row_blocks(M.shape[0], block_rows))
        settings = _LoopSettings(
            loss=loss,
            rules=rules,
            free=free,
            update_spectra=update_spectra,
            max_iter=int(self.max_iter),
            tol=float(self.tol),
            loss_every=loss_every,
            block_rows=block_rows,
            n_threads=self._n_threads(),
            gram_loss=gram_loss,
            norm_sq=norm_sq,
            column_sums=column_sums,
        )
        return settings

    def _fit(self, M: Any, spectra_init: Any, abundance_init: Any, saturation: Any) -> np.ndarray:
        M = _as_float_matrix(M)
        n_components, names, rules, fixed, loss = self._validate(spectra_init)
        _check_finite(M)
        n_pixels, n_wavelengths = M.shape
        if n_pixels < 2 or n_wavelengths < 1:
            raise ValueError(f"M needs at least 2 pixels and 1 wavelength, got shape {M.shape}")
        if n_components > min(n_pixels, n_wavelengths):
            raise ValueError(
                f"n_components={n_components} exceeds what data of shape {M.shape} support "
                f"(at most min(n_pixels, n_wavelengths) = {min(n_pixels, n_wavelengths)})"
            )
        prepared = _prepare_data(M, saturation)
        data = prepared.M
        if not np.any(data):
            raise ValueError("the data are zero everywhere (after clipping negative values); there is nothing to unmix")

        S = self._initial_spectra(data, spectra_init, n_components, names, rules, fixed).astype(M.dtype)
        free = None if not fixed.any() else ~fixed
        settings = self._settings(data, loss, rules, free, update_spectra=True)
        if abundance_init is None and self.abundance_start == "lstsq":
            A_work = _least_squares_abundance(data, S, settings)
        elif abundance_init is None:
            A_work = _constant_abundance(data, S, settings)
        else:
            A_work = _check_abundance_init(abundance_init, n_pixels, n_components, M.dtype)
            A_work = A_work if prepared.fit_rows is None else A_work[prepared.fit_rows]

        log.info(
            "fitting %d components %s to %d pixels x %d wavelengths (%s, %s loss, sparsity %s, fixed %s)",
            n_components, names, data.shape[0], n_wavelengths, M.dtype, loss.value, rules, fixed.tolist(),
        )  # fmt: skip
        self.spectra_init_ = S.copy()
        result = _run_updates(data, A_work, S, settings)
        A = self._assemble_abundance(result, prepared, S, loss, n_pixels)

        # Free spectra are reported with a peak of 1; the weights carry the intensity.
        peaks = S.max(axis=1)
        scale = np.where(fixed | (peaks <= 0), 1.0, peaks).astype(M.dtype)
        S /= scale[:, None]
        A *= scale[None, :]

        self.components_ = S
        self.n_components_ = n_components
        self.component_names_ = names
        self.fixed_ = fixed
        self.sparsity_target_ = rules
        self.n_iter_ = result.n_iter
        self.converged_ = result.converged
        self.loss_history_ = np.asarray(result.loss_history)
        self.loss_every_ = settings.loss_every
        final = result.loss_history[-1]
        self.reconstruction_err_ = float(np.sqrt(final)) if loss is Loss.FROBENIUS else float(final)
        self.thresholds_ = result.cuts
        self.n_zeroed_ = result.n_zeroed
        self.sparsity_ = np.array(
            [hoyer_sparsity(A[:, p]) if rules[p] is not None else np.nan for p in range(n_components)]
        )
        self.n_clipped_ = prepared.n_clipped
        self.saturated_pixels_ = np.zeros(n_pixels, dtype=bool)
        self.saturated_pixels_[prepared.masked_rows] = True
        self.n_features_in_ = n_wavelengths
        self.seconds_per_iter_ = result.seconds / max(result.iterations_timed, 1)

        log.info(
            "stopped after %d iterations (%s), loss %.6g, %.3g s per iteration, sparsity reached %s",
            result.n_iter, "converged" if result.converged else "max_iter reached", final,
            self.seconds_per_iter_, np.round(self.sparsity_, 3).tolist(),
        )  # fmt: skip
        self._warn_if_not_converged(result, stacklevel=4)
        dead = [names[p] for p in range(n_components) if not A[:, p].any() or not S[p].any()]
        if dead:
            message = f"components {dead} ended at zero everywhere; the data may support fewer components"
            warnings.warn(message, DataWarning, stacklevel=4)
        return A

    def _initial_spectra(
        self, data: np.ndarray, spectra_init: Any, n_components: int, names: list[str], rules: list[Any], fixed: np.ndarray
    ) -> np.ndarray:
        if spectra_init is None:
            if self.init == "spa":
                spectra_init = endmember_spectra(data, n_components)
            else:
                mean = mean_spectrum(data)
                spectra_init = np.tile(mean / mean.max(), (n_components, 1))
                if self.init == "random":
                    spectra_init *= np.random.default_rng(self.random_state).uniform(0.5, 1.5, spectra_init.shape)
        return _check_spectra_init(spectra_init, n_components, data.shape[1], rules, fixed, names)

    def _assemble_abundance(
        self, result: _LoopResult, prepared: _PreparedData, S: np.ndarray, loss: Loss, n_pixels: int
    ) -> np.ndarray:
        """Place the fitted rows and the estimated saturated rows in one (n_pixels, P) array."""
        if prepared.fit_rows is None:
            return result.A
        A = np.empty((n_pixels, S.shape[0]), dtype=result.A.dtype)
        A[prepared.fit_rows] = result.A
        estimate = _masked_abundance(prepared.masked_data, prepared.masked_weights, S, loss, int(self.max_iter), float(self.tol))
        for p, cut in enumerate(result.cuts):
            if cut is not None and cut.threshold > 0:
                column = estimate[:, p]
                result.n_zeroed[p] += int(np.count_nonzero(column[column < cut.threshold]))
                column[column < cut.threshold] = 0
        A[prepared.masked_rows] = estimate
        return A

    def _warn_if_not_converged(self, result: _LoopResult, stacklevel: int) -> None:
        if result.converged or self.tol == 0:
            return
        message = (
            f"SparseNMF reached max_iter={self.max_iter} before the relative loss change fell below "
            f"tol={self.tol}; raise max_iter or tol"
        )
        warnings.warn(message, ConvergenceWarning, stacklevel=stacklevel)


_DEFAULTS = SparseNMF().get_params()


def _is_sequence(value: Any) -> bool:
    return isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str)


def _constant_abundance(M: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> np.ndarray:
    """Start A at the constant c that best fits M ≈ c 1 (Σ_p S_p)ᵀ, and give the loop its first AᵀM, AᵀA."""
    spectrum_sum = S.sum(axis=0, dtype=np.float64)
    column_sums = settings.column_sums
    n_pixels, n_components = M.shape[0], S.shape[0]
    c = float(column_sums @ spectrum_sum) / (n_pixels * float(spectrum_sum @ spectrum_sum))
    if not c > 0:
        raise ValueError("the initial spectra do not overlap the data; no positive constant start exists")
    settings.initial_statistics = (
        np.tile(c * column_sums, (n_components, 1)),
        np.full((n_components, n_components), c * c * n_pixels),
    )
    return np.full((n_pixels, n_components), c, dtype=M.dtype)


def _least_squares_abundance(M: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> np.ndarray:
    """Start A at the least-squares weights M Sᵀ (S Sᵀ)⁺ for the initial spectra, clipped at a small positive floor."""
    S64 = S.astype(np.float64)
    projector = (np.linalg.pinv(S64 @ S64.T)).astype(M.dtype)
    A = np.empty((M.shape[0], S.shape[0]), dtype=M.dtype)
    for rows in _row_blocks(M.shape[0], settings.block_rows):
        np.matmul(M[rows] @ S.T, projector, out=A[rows])
    peak = float(A.max())
    if not peak > 0:
        raise ValueError("the initial spectra do not overlap the data; no positive least-squares start exists")
    np.maximum(A, _LSTSQ_FLOOR * peak, out=A)
    return A


def _check_abundance_init(abundance_init: Any, n_pixels: int, n_components: int, dtype: np.dtype) -> np.ndarray:
    A = np.array(abundance_init, dtype=dtype)
    if A.shape != (n_pixels, n_components):
        raise ValueError(f"abundance_init has shape {A.shape}; expected (n_pixels, n_components) = ({n_pixels}, {n_components})")
    if not np.all(np.isfinite(A)) or np.any(A < 0):
        raise ValueError("abundance_init must be finite and non-negative")
    return A


def _masked_abundance(
    M: np.ndarray, weights: np.ndarray | None, S: np.ndarray, loss: Loss, max_iter: int, tol: float
) -> np.ndarray:
    """Estimate the weights of left-out pixels with S fixed, from their entries of weight 1 only.

    Pixels with fewer usable entries than components are estimated from all of their entries.
    """
    n_pixels, n_components = M.shape[0], S.shape[0]
    if weights is None:
        weights = np.ones_like(M)
    too_few = np.count_nonzero(weights, axis=1) < n_components
    if too_few.any():
        first_rows = np.flatnonzero(too_few)[:_SHOWN_PIXELS].tolist()
        log.warning(
            "%d saturated pixels have fewer unsaturated wavelengths than components (rows %s...); "
            "their weights use the saturated values and are lower bounds",
            int(too_few.sum()), first_rows,
        )  # fmt: skip
        weights[too_few] = 1
    weighted = weights * M
    spectrum_sum = S.sum(axis=0)
    A = np.maximum((weighted @ spectrum_sum) / np.maximum((weights * spectrum_sum) @ spectrum_sum, EPSILON), EPSILON)
    A = np.repeat(A[:, None], n_components, axis=1).astype(M.dtype)
    for _ in range(max_iter):
        product = np.maximum(A @ S, EPSILON)
        if loss is Loss.FROBENIUS:
            numerator, denominator = weighted @ S.T, (weights * product) @ S.T
        else:
            numerator, denominator = (weighted / product) @ S.T, weights @ S.T
        denominator[denominator == 0] = EPSILON
        updated = A * numerator / denominator
        change = float(np.max(np.abs(updated - A))) / max(float(np.max(A)), EPSILON)
        A = updated
        if change < tol:
            break
    return A
