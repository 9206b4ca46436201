"""The update loop of SparseNMF, and its passes over an in-memory data matrix.

The loop (:class:`_Updater`) keeps A_work, the thresholded A, S and the reductions AᵀM and AᵀA.
Every Frobenius pass over M goes through an executor with three methods (:meth:`frobenius_pass`,
:meth:`rows_product`, :meth:`squared_residual`): :class:`StripeExecutor` runs them on an in-memory M,
one stripe of rows per thread, and :class:`fluoscan.unmixing.dask_backend.DaskExecutor` on row
blocks read from a Zarr store by Dask workers. The sparsity step, the S update and the stopping
rule run on the caller's side, so that both give the same fit.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from fluoscan.unmixing import compiled, kernels
from fluoscan.unmixing.array_api import ArrayExecutor, namespace
from fluoscan.unmixing.kernels import (
    Loss,
    _gram,
    _row_blocks,
    frobenius_loss,
    kl_statistics,
    update_abundance_kl,
    update_spectra,
    update_spectra_kl,
)
from fluoscan.unmixing.sparsity import Threshold, noise_threshold
from fluoscan.unmixing.threshold_search import INITIAL_WIDTH, search_thresholds

log = logging.getLogger(__name__)


def pass_kernels(use_compiled: bool) -> ModuleType:
    """Return the module whose pass kernels run: the numba ones when asked for and installed, else BLAS."""
    return compiled if use_compiled and compiled.AVAILABLE else kernels


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
    # Run the Frobenius passes with the numba kernels of fluoscan.unmixing.compiled when installed.
    compiled: bool = False
    # "cpu", or a device of fluoscan.unmixing.array_api (e.g. "cuda") that keeps M for the passes.
    device: str = "cpu"


class Executor(Protocol):
    """Runs the Frobenius passes over M for the update loop; A_work, A and W are (n_rows, ·) arrays in memory."""

    n_rows: int
    n_wavelengths: int

    def frobenius_pass(self, A_work: np.ndarray, S: np.ndarray, SSt: np.ndarray, accumulate: np.ndarray) -> np.ndarray:
        """Update A_work in place and return the new A_workᵀM of the ``accumulate`` columns (P, n_wavelengths), float64."""

    def rows_product(self, W: np.ndarray) -> np.ndarray:
        """Return Wᵀ M (q, n_wavelengths) in float64, reading only rows of M where W is non-zero."""

    def squared_residual(self, A: np.ndarray, S: np.ndarray) -> float:
        """Return ‖M − A S‖²."""


@dataclass
class _Stripe:
    """A contiguous range of row blocks that one thread processes, with its own work buffers."""

    blocks: list[slice]
    ratio: np.ndarray
    sums: np.ndarray
    row_losses: np.ndarray

    @property
    def rows(self) -> slice:
        return slice(self.blocks[0].start, self.blocks[-1].stop)


class StripeExecutor:
    """Passes over an in-memory M, one stripe of rows per thread.

    The kernels release the GIL, so the stripes run in parallel. Their partial sums are added in
    stripe order, so that a fit repeats exactly with the same number of threads.
    """

    def __init__(self, M: np.ndarray, n_threads: int, block_rows: int, ops: ModuleType) -> None:
        self.M, self.block_rows, self.ops = M, block_rows, ops
        self.n_rows, self.n_wavelengths = M.shape
        blocks = _row_blocks(self.n_rows, block_rows)
        block_size = blocks[0].stop - blocks[0].start
        n_stripes = max(1, min(n_threads, len(blocks)))
        self.stripes = []
        for group in np.array_split(np.arange(len(blocks)), n_stripes):
            stripe_blocks = [blocks[i] for i in group]
            self.stripes.append(
                _Stripe(
                    blocks=stripe_blocks,
                    ratio=np.empty((block_size, self.n_wavelengths), M.dtype),
                    sums=np.zeros((0, self.n_wavelengths)),
                    row_losses=np.empty(stripe_blocks[-1].stop - stripe_blocks[0].start, M.dtype),
                )
            )
        self.pool: ThreadPoolExecutor | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Start one thread per stripe, with BLAS limited to one thread, for the passes inside the block."""
        if len(self.stripes) == 1:
            yield
            return
        with ThreadPoolExecutor(len(self.stripes), thread_name_prefix="sparse-nmf") as pool, _single_threaded_blas():
            self.pool = pool
            try:
                yield
            finally:
                self.pool = None

    def map(self, work: Callable[[_Stripe], Any]) -> list[Any]:
        if self.pool is None:
            return [work(stripe) for stripe in self.stripes]
        return list(self.pool.map(work, self.stripes))

    def _reduce(self, n_sums: int, work: Callable[[_Stripe, np.ndarray], None]) -> np.ndarray:
        """Run ``work(stripe, out)`` on every stripe, each adding into its own zeroed (n_sums, n_wavelengths) array, and sum them in stripe order."""
        for stripe in self.stripes:
            if stripe.sums.shape[0] != n_sums:
                stripe.sums = np.zeros((n_sums, self.n_wavelengths))
            stripe.sums[...] = 0.0
        self.map(lambda stripe: work(stripe, stripe.sums))
        total = self.stripes[0].sums.copy()
        for stripe in self.stripes[1:]:
            total += stripe.sums
        return total

    def frobenius_pass(self, A_work: np.ndarray, S: np.ndarray, SSt: np.ndarray, accumulate: np.ndarray) -> np.ndarray:
        def work(stripe: _Stripe, out: np.ndarray) -> None:
            rows = stripe.rows
            self.ops.frobenius_pass(self.M[rows], A_work[rows], S, SSt, out, accumulate, rows.start, self.block_rows)

        return self._reduce(A_work.shape[1], work)

    def rows_product(self, W: np.ndarray) -> np.ndarray:
        def work(stripe: _Stripe, out: np.ndarray) -> None:
            rows = stripe.rows
            self.ops.rows_product(self.M[rows], W[rows], out, rows.start, self.block_rows)

        return self._reduce(W.shape[1], work)

    def squared_residual(self, A: np.ndarray, S: np.ndarray) -> float:
        def work(stripe: _Stripe) -> None:
            rows = stripe.rows
            self.ops.row_squared_residuals(self.M[rows], A[rows], S, stripe.row_losses)

        self.map(work)
        return float(sum(np.sum(stripe.row_losses, dtype=np.float64) for stripe in self.stripes))


class _Updater:
    """The update loop: S update, A pass, sparsity step and the stopping rule.

    Frobenius passes go through ``executor``; the Kullback-Leibler loss needs a
    :class:`StripeExecutor` over an in-memory M.
    """

    def __init__(self, executor: Executor, A_work: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> None:
        self.executor, self.A_work, self.S, self.settings = executor, A_work, S, settings
        self.ops = pass_kernels(settings.compiled)
        n_pixels, n_components = A_work.shape
        self.targeted = [p for p, rule in enumerate(settings.rules) if rule is not None]
        self.frobenius = settings.loss is Loss.FROBENIUS

        self.A = np.empty_like(A_work) if self.targeted else A_work
        self.cuts: list[Threshold | None] = [None] * n_components
        self.n_zeroed = np.zeros(n_components, dtype=np.int64)
        self.widths = [INITIAL_WIDTH] * n_components
        self.window = np.empty((len(self.targeted), n_pixels))
        self.columns = np.empty((n_components, n_pixels), dtype=A_work.dtype)
        self.threshold_seconds = 0.0
        # Targeted columns with more kept entries than this are summed in the A pass and corrected
        # for their cut rows; sparser ones are summed over their kept rows only.
        self.dense_limit = n_pixels // 2
        self.kept = np.full(n_components, n_pixels, dtype=np.int64)

        if self.targeted:
            self.threshold()
        if not self.frobenius:
            return
        self.AtM = np.zeros((n_components, executor.n_wavelengths))
        # The statistics of a constant start hold as long as the first cut kept every entry.
        if settings.initial_statistics is not None and not self.n_zeroed.any():
            self.AtM[...], self.AtA = settings.initial_statistics[0], settings.initial_statistics[1].copy()
            return
        self.AtM[...] = executor.rows_product(self.A)
        self.AtA = _gram(self.A)

    def run(self) -> _LoopResult:
        running = self.executor.running() if hasattr(self.executor, "running") else contextlib.nullcontext()
        with running:
            return self._iterate()

    def _iterate(self) -> _LoopResult:
        settings = self.settings
        history: list[float] = []
        checked_at: list[int] = []
        converged = False
        # Only the loop's searches count, like the loop's time in seconds_per_iter_.
        self.threshold_seconds = 0.0
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
        searched = []
        for p in self.targeted:
            if self.settings.rules[p] == "auto":
                self.cuts[p] = noise_threshold(self.A_work[:, p])
            else:
                searched.append(p)
        if searched:
            previous = [self.cuts[p].threshold if self.cuts[p] is not None else 0.0 for p in searched]
            targets = [float(self.settings.rules[p]) for p in searched]
            widths = [self.widths[p] for p in searched]
            found = search_thresholds(self.A_work, searched, targets, previous, widths, self.window)
            for p, (cut, width) in zip(searched, found):
                self.cuts[p], self.widths[p] = cut, width
        self.threshold_seconds += time.perf_counter() - started

    def threshold(self) -> None:
        """Cut the targeted columns of A_work into A, and bring AᵀA and AᵀM up to date (Frobenius)."""
        self.find_cuts()
        thresholds = np.array([0.0 if cut is None else cut.threshold for cut in self.cuts], dtype=self.A.dtype)
        self.AtA = np.empty((self.A.shape[1], self.A.shape[1]))
        counts = self.ops.threshold_gram(self.A_work, self.A, thresholds, self.columns, self.AtA)
        self.n_zeroed[self.targeted] = counts[1, self.targeted] - counts[0, self.targeted]
        dense = self.kept > self.dense_limit
        self.kept = counts[0]
        if not self.frobenius or not hasattr(self, "AtM"):
            return

        # Sparse columns: their AᵀM is the sum over kept rows. Dense ones were summed from A_work in
        # the A pass, so subtracting the cut rows' share leaves AᵀM.
        correction = np.zeros((self.A.shape[0], len(self.targeted)), dtype=self.A.dtype)
        for index, p in enumerate(self.targeted):
            if dense[p]:
                np.subtract(self.A[:, p], self.A_work[:, p], out=correction[:, index])
            else:
                correction[:, index] = self.A[:, p]
        sums = self.executor.rows_product(correction)
        for index, p in enumerate(self.targeted):
            self.AtM[p] = (self.AtM[p] if dense[p] else 0.0) + sums[index]

    # ------------------------------------------------------------------ passes over M

    def frobenius_loss(self) -> float:
        if self.settings.gram_loss:
            return frobenius_loss(self.settings.norm_sq, self.AtM, self.AtA, self.S)
        return self.executor.squared_residual(self.A, self.S)

    def update_abundance(self) -> None:
        if not self.frobenius:
            self.executor.map(self._stripe_update_abundance_kl)
            return
        # One pass over M: each row's A update and its share of AᵀM read the row while it is in cache.
        # Sparse targeted columns are summed afterwards over their kept rows alone.
        self.SSt = self.S @ self.S.T
        accumulate = np.ones(self.A.shape[1], dtype=bool)
        accumulate[self.targeted] = self.kept[self.targeted] > self.dense_limit
        self.AtM[...] = self.executor.frobenius_pass(self.A_work, self.S, self.SSt, accumulate)

    def kl_statistics(self, divergence: bool) -> float:
        """Reduce Aᵀ(M ⊘ AS) and the column sums of A over the stripes; return D(M‖AS) when asked."""
        self.AtR = np.zeros(self.S.shape)
        self.A_sum = np.zeros(self.S.shape[0])
        total = 0.0
        for AtR, A_sum, value in self.executor.map(lambda stripe: self._stripe_kl_statistics(stripe, divergence)):
            self.AtR += AtR
            self.A_sum += A_sum
            total += value
        return max(total, 0.0)

    def _stripe_kl_statistics(self, stripe: _Stripe, divergence: bool) -> tuple[np.ndarray, np.ndarray, float]:
        M = self.executor.M
        AtR, A_sum, total = np.zeros(self.S.shape), np.zeros(self.S.shape[0]), 0.0
        for rows in stripe.blocks:
            block_AtR, block_sum, value = kl_statistics(
                self.A[rows], M[rows], self.S, stripe.ratio[: rows.stop - rows.start], divergence=divergence
            )
            AtR += block_AtR
            A_sum += block_sum
            total += value
        return AtR, A_sum, total

    def _stripe_update_abundance_kl(self, stripe: _Stripe) -> None:
        M = self.executor.M
        for rows in stripe.blocks:
            update_abundance_kl(self.A_work[rows], M[rows], self.S, stripe.ratio[: rows.stop - rows.start])


@contextlib.contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """Limit BLAS to one thread while the stripes run in parallel.

    Without the limit, every stripe's BLAS call would start its own threads and oversubscribe the cores.
    """
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _run_updates(M: np.ndarray, A_work: np.ndarray, S: np.ndarray, settings: _LoopSettings) -> _LoopResult:
    """Iterate the updates on ``A_work`` and ``S`` in place; return the thresholded A and the loss history."""
    executor: Executor
    if settings.device == "cpu":
        executor = StripeExecutor(M, settings.n_threads, settings.block_rows, pass_kernels(settings.compiled))
    else:
        executor = ArrayExecutor(M, namespace(settings.device), settings.block_rows)
    return _Updater(executor, A_work, S, settings).run()
