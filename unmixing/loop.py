"""The update loop of SparseNMF over one in-memory data matrix."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fluoscan.unmixing.kernels import (
    Loss,
    _gram,
    _kept_rows_product,
    _row_blocks,
    frobenius_loss,
    kl_statistics,
    squared_residual,
    update_abundance,
    update_abundance_kl,
    update_spectra,
    update_spectra_kl,
)
from fluoscan.unmixing import compiled
from fluoscan.unmixing.sparsity import Threshold, apply_threshold, noise_threshold
from fluoscan.unmixing.threshold_search import INITIAL_WIDTH, search_threshold

log = logging.getLogger(__name__)


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
    threshold_seconds: float = 0.0


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
    # Run the Frobenius passes with the numba kernels of fluoscan.unmixing.compiled.
    compiled: bool = False


@dataclass
class _Stripe:
    """A contiguous range of row blocks that one thread processes, with its own work buffers."""

    blocks: list[slice]
    ratio: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray
    # Compiled path: float64 reductions of this stripe, and the squared residual of each of its rows.
    sums: np.ndarray | None = None
    row_losses: np.ndarray | None = None

    @property
    def rows(self) -> slice:
        return slice(self.blocks[0].start, self.blocks[-1].stop)


class _Updater:
    """The update loop over one data matrix, with A_work, the thresholded A, S and the reductions.

    The rows are split into one stripe per thread. Each pass over M runs the stripes in parallel
    (BLAS and the compiled kernels release the GIL) and adds up their partial reductions in stripe
    order, so that a fit repeats exactly with the same number of threads.
    """

    def __init__(self, M: np.ndarray, A_work: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> None:
        self.M, self.A_work, self.S, self.settings = M, A_work, S, settings
        n_pixels, n_components = A_work.shape
        self.targeted = [p for p, rule in enumerate(settings.rules) if rule is not None]
        self.frobenius = settings.loss is Loss.FROBENIUS
        self.compiled = settings.compiled and self.frobenius

        self.A = np.empty_like(A_work) if self.targeted else A_work
        self.cuts: list[Threshold | None] = [None] * n_components
        self.n_zeroed = np.zeros(n_components, dtype=np.int64)
        self.widths = [INITIAL_WIDTH] * n_components
        self.window = np.empty(n_pixels)
        self.columns = np.empty((n_components, n_pixels), dtype=A_work.dtype) if self.compiled else None
        self.threshold_seconds = 0.0
        # Targeted columns with more kept entries than this are summed in the A pass and corrected
        # for their cut rows; sparser ones are summed over their kept rows only.
        self.dense_limit = n_pixels // 2
        self.kept = np.full(n_components, n_pixels, dtype=np.int64)

        blocks = _row_blocks(n_pixels, settings.block_rows)
        block_size = blocks[0].stop - blocks[0].start
        n_stripes = max(1, min(settings.n_threads, len(blocks)))
        self.stripes = []
        for group in np.array_split(np.arange(len(blocks)), n_stripes):
            stripe_blocks = [blocks[i] for i in group]
            n_rows = stripe_blocks[-1].stop - stripe_blocks[0].start
            self.stripes.append(
                _Stripe(
                    blocks=stripe_blocks,
                    ratio=np.empty((block_size, M.shape[1]), M.dtype),
                    numerator=np.empty((block_size, n_components), M.dtype),
                    denominator=np.empty((block_size, n_components), M.dtype),
                    sums=np.zeros((n_components, M.shape[1])) if self.compiled else None,
                    row_losses=np.empty(n_rows, M.dtype) if self.compiled else None,
                )
            )
        self.pool: ThreadPoolExecutor | None = None

        if self.targeted:
            self.threshold()
        if not self.frobenius:
            return
        self.AtM = np.zeros((n_components, M.shape[1]))
        if settings.initial_statistics is not None and not self.targeted:
            self.AtM[...], self.AtA = settings.initial_statistics[0], settings.initial_statistics[1].copy()
            return
        if self.compiled:
            self.AtM[...] = self._reduce(lambda stripe: self._stripe_rows_product(stripe, self.A))
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

    def _reduce(self, work: Any) -> np.ndarray:
        """Run ``work`` on every stripe, which fills ``stripe.sums``, and return their sum in stripe order."""
        for stripe in self.stripes:
            stripe.sums[...] = 0.0
        self._map(work)
        total = self.stripes[0].sums.copy()
        for stripe in self.stripes[1:]:
            total += stripe.sums
        return total

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
                self.threshold()
            elif self.frobenius:
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
            threshold_seconds=self.threshold_seconds,
        )

    # ------------------------------------------------------------------ the sparsity step

    def find_cuts(self) -> None:
        """Find each targeted column's cut, starting each search from the column's previous threshold."""
        started = time.perf_counter()
        for p in self.targeted:
            rule = self.settings.rules[p]
            column = self.A_work[:, p]
            if rule == "auto":
                self.cuts[p] = noise_threshold(column)
                continue
            previous = self.cuts[p].threshold if self.cuts[p] is not None else 0.0
            self.cuts[p], self.widths[p] = search_threshold(column, float(rule), previous, self.widths[p], self.window)
        self.threshold_seconds += time.perf_counter() - started

    def threshold(self) -> None:
        """Cut the targeted columns of A_work into A, and bring AᵀA and AᵀM up to date (Frobenius)."""
        self.find_cuts()
        if not self.compiled:
            for p in range(self.A.shape[1]):
                cut = self.cuts[p]
                if cut is None:
                    self.A[:, p] = self.A_work[:, p]
                else:
                    self.n_zeroed[p] = apply_threshold(self.A_work[:, p], cut, self.A[:, p])
            if self.frobenius and hasattr(self, "AtM"):
                self.AtM[self.targeted] = _kept_rows_product(self.A[:, self.targeted], self.M, self.settings.block_rows)
                self.AtA = _gram(self.A)
            return

        thresholds = np.array([0.0 if cut is None else cut.threshold for cut in self.cuts], dtype=self.A.dtype)
        self.AtA = np.empty((self.A.shape[1], self.A.shape[1]))
        counts = compiled.threshold_gram(self.A_work, self.A, thresholds, self.columns, self.AtA)
        self.n_zeroed[self.targeted] = counts[1, self.targeted] - counts[0, self.targeted]
        dense = self.kept > self.dense_limit
        self.kept = counts[0]
        if not hasattr(self, "AtM"):
            return

        # Sparse columns: their AᵀM is the sum over kept rows. Dense ones were summed from A_work in
        # the A pass, so subtracting the cut rows' share leaves AᵀM.
        correction = np.zeros((self.M.shape[0], len(self.targeted)), dtype=self.A.dtype)
        for index, p in enumerate(self.targeted):
            if dense[p]:
                np.subtract(self.A[:, p], self.A_work[:, p], out=correction[:, index])
            else:
                correction[:, index] = self.A[:, p]
        sums = self._reduce(lambda stripe: self._stripe_rows_product(stripe, correction, self.targeted))
        for index, p in enumerate(self.targeted):
            self.AtM[p] = (self.AtM[p] if dense[p] else 0.0) + sums[p]

    # ------------------------------------------------------------------ passes over M

    def frobenius_loss(self) -> float:
        if self.settings.gram_loss:
            return frobenius_loss(self.settings.norm_sq, self.AtM, self.AtA, self.S)
        if self.compiled:
            self._map(self._stripe_row_losses)
            return float(sum(np.sum(stripe.row_losses, dtype=np.float64) for stripe in self.stripes))
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
        if self.compiled:
            # Sparse targeted columns are summed later over their kept rows alone.
            accumulate = np.ones(self.A.shape[1], dtype=bool)
            accumulate[self.targeted] = self.kept[self.targeted] > self.dense_limit
            self.AtM[...] = self._reduce(lambda stripe: self._stripe_frobenius_pass(stripe, accumulate))
            return
        self.AtM[...] = 0.0
        for part in self._map(self._stripe_update_abundance):
            self.AtM += part

    def _stripe_frobenius_pass(self, stripe: _Stripe, accumulate: np.ndarray) -> None:
        rows = stripe.rows
        compiled.frobenius_pass(
            self.M[rows], self.A_work[rows], self.S, self.SSt, stripe.sums, accumulate, rows.start, self.settings.block_rows
        )

    def _stripe_rows_product(self, stripe: _Stripe, W: np.ndarray, columns: list[int] | None = None) -> None:
        rows = stripe.rows
        out = stripe.sums if columns is None else np.zeros((W.shape[1], self.M.shape[1]))
        compiled.rows_product(self.M[rows], W[rows], out, rows.start, self.settings.block_rows)
        if columns is not None:
            stripe.sums[columns] = out

    def _stripe_row_losses(self, stripe: _Stripe) -> None:
        rows = stripe.rows
        compiled.row_squared_residuals(self.M[rows], self.A[rows], self.S, stripe.row_losses)

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
