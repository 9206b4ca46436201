"""Out-of-core sparse NMF of a scan store on a dask.distributed cluster.

The cube M (acquired pixels x wavelengths) never sits in one process. Dask workers read ``raw`` from
the Zarr store in blocks of whole scan lines, which are whole chunks (one chunk per line), subtract
the dark frame and run one pass of the update loop on their block. The client keeps only what grows
with the number of pixels times P: the weights A_work and A (float32, n_pixels x P, 1/170 of a
512-wavelength cube) and the spectra S.

Each iteration runs the same loop as the in-memory fit (:class:`fluoscan.unmixing.loop._Updater`):

1. S ← S ∘ (AᵀM) ⊘ (AᵀA S) on the client, from AᵀM and AᵀA reduced over the blocks.
2. One pass over the blocks: each worker updates its rows of A_work with the new S and returns
   them with its block's A_workᵀM. No block of M leaves its worker.
3. The sparsity step on the client. A hard threshold needs each marker column whole (the cut is
   found from the column's sorted values), so A_work is gathered and cut exactly as in memory.
   The AᵀM of a cut column is then corrected with a second read of the blocks that contain kept
   (or, for dense columns, cut) pixels of it.

Every 10 iterations one more pass computes ‖M − AS‖². The kernels sum each
block of rows at the same global row boundaries as the in-memory loop, so both paths give the same
fit up to the order of float64 additions. The tests allow a relative difference of 1e-5.

Workers open the store by its path, so on a cluster every worker must see the store at that path.
The backend fits the Frobenius loss only. It rejects components with an ``"auto"`` initial spectrum,
because those are picked from the whole cube at once.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fluoscan.acquisition.store import ScanStore, StoreError
from fluoscan.unmixing.checks import DataWarning, _check_spectra_init, _PreparedData
from fluoscan.unmixing.init import initial_spectrum
from fluoscan.unmixing.kernels import Loss, _row_blocks
from fluoscan.unmixing.loop import _LoopSettings, _Updater, pass_kernels
from fluoscan.unmixing.nmf import _LSTSQ_FLOOR, SparseNMF, _constant_abundance

log = logging.getLogger(__name__)

# float32 bytes of M in one task's block of lines; a task holds about three times this.
DEFAULT_BLOCK_BYTES = 32 * 2**20
# A block takes at most this fraction of the smallest worker memory limit, so that a worker's
# interpreter, its libraries and one task's arrays stay well inside the limit.
_BLOCK_FRACTION_OF_LIMIT = 1 / 16
# Rows that one step of a task converts to float64 (residual, sums of squares).
_RESIDUAL_ROWS = 512
# Seconds that one pass over the store may take before the fit is abandoned.
DEFAULT_PASS_TIMEOUT_S = 3600.0
# Seconds allowed to connect to a scheduler.
CONNECT_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class _Block:
    """A run of consecutive acquired lines that one task reads, with where its rows sit in M."""

    start_line: int
    stop_line: int
    first_pixel: int  # index of its first pixel among the acquired pixels
    first_row: int  # index of its first fitted row (acquired pixels less saturated ones)
    fit_mask: np.ndarray | None  # (pixels,) bool, False for saturated pixels; None when none is


# ---------------------------------------------------------------------- work done on the workers


_thread_buffers = threading.local()


@functools.lru_cache(maxsize=8)
def _open_raw(raw_path: str) -> Any:
    import zarr

    return zarr.open_array(raw_path, mode="r", zarr_format=3)


def _float_buffer(shape: tuple[int, ...]) -> np.ndarray:
    """Return a float32 array of ``shape`` that this thread reuses from task to task.

    A fresh array per task would be mapped and faulted in page by page each time, which cost
    more system time than the task's arithmetic. Task results never point into this buffer.
    """
    size = int(np.prod(shape))
    buffer = getattr(_thread_buffers, "float32", None)
    if buffer is None or buffer.size < size:
        buffer = np.empty(size, dtype=np.float32)
        _thread_buffers.float32 = buffer
    return buffer[:size].reshape(shape)


def _read_block(raw_path: str, start_line: int, stop_line: int, dark: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the raw counts (lines, x, wavelength) and M (pixels, wavelength) float32 minus dark, unclipped."""
    raw = np.asarray(_open_raw(raw_path)[start_line:stop_line])
    cube = _float_buffer(raw.shape)
    if dark is None:
        np.copyto(cube, raw, casting="unsafe")
    else:
        np.subtract(raw, dark[None, :, :], out=cube, dtype=np.float32)
    return raw, cube.reshape(-1, cube.shape[-1])


def _fit_rows(M: np.ndarray, fit_mask: np.ndarray | None) -> np.ndarray:
    """Return the fitted rows of a block, clipped at 0 as SparseNMF clips its input."""
    rows = M if fit_mask is None else M[fit_mask]
    np.maximum(rows, 0, out=rows)
    return rows


def _moments_task(raw_path: str, lines: tuple[int, int], dark: np.ndarray | None, saturation_counts: float | None) -> dict:
    """First pass: saturated pixels, clipped values, and the sums that the start of the fit needs."""
    raw, M = _read_block(raw_path, *lines, dark)
    n_wavelengths = M.shape[1]
    saturated_entries = None
    if saturation_counts is not None:
        saturated_entries = (raw >= saturation_counts).reshape(-1, n_wavelengths)
    pixel_saturated = saturated_entries.any(axis=1) if saturated_entries is not None else np.zeros(M.shape[0], bool)

    moments = {
        "n_nonfinite": int(np.count_nonzero(~np.isfinite(M))),
        "n_negative": int(np.count_nonzero(M < 0)),
        "sum_all": np.sum(M, axis=0, dtype=np.float64),
        "fit_mask": None if not pixel_saturated.any() else ~pixel_saturated,
    }
    if pixel_saturated.any():
        moments["saturated_data"] = np.maximum(M[pixel_saturated], 0)
        moments["saturated_weights"] = (~saturated_entries[pixel_saturated]).astype(np.float32)
    fitted = _fit_rows(M, moments["fit_mask"])
    moments["n_fit_rows"] = fitted.shape[0]
    # Summed in row blocks: einsum with dtype=float64 would copy the whole block to float64 at once.
    moments["norm_sq"] = sum(
        float(np.einsum("ij,ij->", fitted[rows], fitted[rows], dtype=np.float64)) for rows in _row_blocks(fitted.shape[0], _RESIDUAL_ROWS)
    )
    moments["column_sums"] = np.sum(fitted, axis=0, dtype=np.float64)
    return moments


def _fitted_block(raw_path: str, lines: tuple[int, int], dark: np.ndarray | None, fit_mask: np.ndarray | None) -> np.ndarray:
    return _fit_rows(_read_block(raw_path, *lines, dark)[1], fit_mask)


def _update_task(
    raw_path: str,
    lines: tuple[int, int],
    dark: np.ndarray | None,
    fit_mask: np.ndarray | None,
    A_work: np.ndarray,
    S: np.ndarray,
    SSt: np.ndarray,
    accumulate: np.ndarray,
    first_row: int,
    block_rows: int,
) -> tuple[np.ndarray, np.ndarray]:
    M = _fitted_block(raw_path, lines, dark, fit_mask)
    AtM = np.zeros((S.shape[0], M.shape[1]))
    pass_kernels(True).frobenius_pass(M, A_work, S, SSt, AtM, accumulate, first_row, block_rows)
    return A_work, AtM


def _rows_product_task(
    raw_path: str,
    lines: tuple[int, int],
    dark: np.ndarray | None,
    fit_mask: np.ndarray | None,
    W: np.ndarray,
    first_row: int,
    block_rows: int,
) -> np.ndarray:
    M = _fitted_block(raw_path, lines, dark, fit_mask)
    out = np.zeros((W.shape[1], M.shape[1]))
    pass_kernels(True).rows_product(M, W, out, first_row, block_rows)
    return out


def _loss_task(
    raw_path: str, lines: tuple[int, int], dark: np.ndarray | None, fit_mask: np.ndarray | None, A: np.ndarray, S: np.ndarray
) -> float:
    M = _fitted_block(raw_path, lines, dark, fit_mask)
    row_losses = np.empty(M.shape[0], dtype=M.dtype)
    pass_kernels(True).row_squared_residuals(M, A, S, row_losses)
    return float(np.sum(row_losses, dtype=np.float64))


def _least_squares_task(
    raw_path: str, lines: tuple[int, int], dark: np.ndarray | None, fit_mask: np.ndarray | None, S: np.ndarray, projector: np.ndarray
) -> np.ndarray:
    M = _fitted_block(raw_path, lines, dark, fit_mask)
    return (M @ S.T) @ projector


def _residual_task(raw_path: str, lines: tuple[int, int], dark: np.ndarray | None, A: np.ndarray, S: np.ndarray) -> np.ndarray:
    """Return ‖m − a S‖ of every acquired pixel of the block, from the unclipped data, in float64."""
    M = _read_block(raw_path, *lines, dark)[1]
    S = S.astype(np.float64)
    norms = np.empty(M.shape[0])
    for rows in _row_blocks(M.shape[0], _RESIDUAL_ROWS):
        residual = M[rows].astype(np.float64) - A[rows].astype(np.float64) @ S
        norms[rows] = np.sqrt(np.einsum("ij,ij->i", residual, residual))
    return norms


# ---------------------------------------------------------------------- the client side


class DaskExecutor:
    """The update loop's passes over M, run by Dask workers on blocks of lines read from the store."""

    def __init__(self, client: Any, raw_path: str, dark: Any, blocks: list[_Block], n_rows: int, n_wavelengths: int,
                 block_rows: int, pass_timeout_s: float) -> None:  # fmt: skip
        self.client, self.raw_path, self.dark, self.blocks = client, raw_path, dark, blocks
        self.n_rows, self.n_wavelengths, self.block_rows = n_rows, n_wavelengths, block_rows
        self.pass_timeout_s = pass_timeout_s

    def _rows(self, index: int) -> slice:
        end = self.blocks[index + 1].first_row if index + 1 < len(self.blocks) else self.n_rows
        return slice(self.blocks[index].first_row, end)

    def _lines(self, block: _Block) -> tuple[int, int]:
        return block.start_line, block.stop_line

    def _run(self, function: Any, per_block: list[tuple[int, tuple]]) -> list[Any]:
        """Submit ``function(raw_path, lines, dark, fit_mask, *arguments)`` for each (block index, arguments) and gather in order."""
        futures = [
            self.client.submit(function, self.raw_path, self._lines(self.blocks[i]), self.dark, self.blocks[i].fit_mask, *arguments, pure=False)
            for i, arguments in per_block
        ]  # fmt: skip
        return _gather(self.client, futures, self.pass_timeout_s)

    def frobenius_pass(self, A_work: np.ndarray, S: np.ndarray, SSt: np.ndarray, accumulate: np.ndarray) -> np.ndarray:
        per_block = []
        for index, block in enumerate(self.blocks):
            rows = self._rows(index)
            per_block.append((index, (A_work[rows], S, SSt, accumulate, block.first_row, self.block_rows)))
        AtM = np.zeros((S.shape[0], self.n_wavelengths))
        for (index, _), (A_block, block_AtM) in zip(per_block, self._run(_update_task, per_block)):
            A_work[self._rows(index)] = A_block
            AtM += block_AtM
        return AtM

    def rows_product(self, W: np.ndarray) -> np.ndarray:
        # Blocks where W is zero contribute nothing and are not read.
        per_block = []
        for index, block in enumerate(self.blocks):
            rows = self._rows(index)
            if W[rows].any():
                per_block.append((index, (W[rows], block.first_row, self.block_rows)))
        out = np.zeros((W.shape[1], self.n_wavelengths))
        for partial in self._run(_rows_product_task, per_block):
            out += partial
        return out

    def squared_residual(self, A: np.ndarray, S: np.ndarray) -> float:
        per_block = [(index, (A[self._rows(index)], S)) for index in range(len(self.blocks))]
        return float(sum(self._run(_loss_task, per_block)))

    def least_squares(self, S: np.ndarray, projector: np.ndarray) -> np.ndarray:
        per_block = [(index, (S, projector)) for index in range(len(self.blocks))]
        return np.concatenate(self._run(_least_squares_task, per_block))


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, *, n_workers: int | None = None, memory_limit: str | int | None = None) -> Iterator[Any]:
    """Connect to ``scheduler``, or start a LocalCluster on 127.0.0.1 (one single-threaded worker per core) for the block.

    Parameters
    ----------
    scheduler : str, optional
        Address of a running scheduler, e.g. ``"tcp://10.0.0.5:8786"``. None starts a LocalCluster.
    n_workers : int, optional
        Worker processes of the LocalCluster; default one per CPU core.
    memory_limit : str or int, optional
        Memory limit of each LocalCluster worker (bytes or a string such as ``"2GiB"``); default
        Dask's, the machine's memory divided among the workers.
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError as exc:
        raise ImportError(
            "the Dask backend needs dask.distributed; install it with: pip install 'fluoscan[dask]'"
        ) from exc
    if scheduler is not None:
        with Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s") as client:
            log.info("connected to Dask scheduler %s", scheduler)
            yield client
        return
    n_workers = n_workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    # One thread per worker: each task's kernels run single-threaded, and processes share nothing.
    with (
        LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
            memory_limit="auto" if memory_limit is None else memory_limit,
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info("started a Dask LocalCluster of %d workers at %s", n_workers, cluster.scheduler_address)
        yield client


def _line_blocks(done: np.ndarray, lines_per_block: int) -> list[tuple[int, int]]:
    """Split the acquired lines into runs of consecutive lines, at most ``lines_per_block`` each."""
    blocks = []
    line = 0
    while line < done.size:
        if not done[line]:
            line += 1
            continue
        stop = line
        while stop < done.size and done[stop] and stop - line < lines_per_block:
            stop += 1
        blocks.append((line, stop))
        line = stop
    return blocks


def fit_store(
    store: ScanStore,
    *,
    components: Sequence[str],
    spectra: Sequence[str],
    sparsity: Sequence[Any],
    fixed: Sequence[bool],
    max_iter: int,
    tol: float,
    loss: str = "frobenius",
    abundance_start: str = "constant",
    random_state: int | None = None,
    saturation_counts: float | None = None,
    reference_mean: np.ndarray | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    pass_timeout_s: float = DEFAULT_PASS_TIMEOUT_S,
) -> tuple[SparseNMF, np.ndarray, np.ndarray]:
    """Fit sparse NMF to a store's acquired lines on a Dask cluster, reading ``raw`` block by block.

    Parameters
    ----------
    store : ScanStore
        The scan store; only its acquired lines (``line_done``) enter the fit.
    components, spectra, sparsity, fixed
        One entry per component: name, initial spectrum source (as in
        :class:`~fluoscan.acquisition.config.ComponentConfig`, except ``"auto"``), sparsity target, fixed flag.
    max_iter, tol, loss, abundance_start, random_state
        As for :class:`~fluoscan.unmixing.SparseNMF`; ``loss`` must be ``"frobenius"``.
    saturation_counts : float, optional
        Raw count at and above which an entry is saturated; None for no saturation.
    reference_mean : ndarray, optional
        Mean spectrum of the reference acquisition, needed by components whose spectrum is ``"reference"``.
    scheduler : str, optional
        Address of a Dask scheduler; None starts a LocalCluster on this machine.
    n_workers, memory_limit
        LocalCluster settings (see :func:`dask_client`).
    block_bytes : int, default=32 MiB
        float32 bytes of M that one task reads, rounded to whole lines (at least one), and at most
        1/16 of the smallest worker memory limit.
    pass_timeout_s : float, default=3600
        Maximum time in seconds that one pass over the store may take.

    Returns
    -------
    model : SparseNMF
        The fitted estimator, with the attributes of an in-memory fit.
    abundance : ndarray of shape (y, x, P), float32
        Weights A, NaN on lines never acquired.
    residual : ndarray of shape (y, x), float32
        ‖m − a S‖ per pixel, in counts, NaN on lines never acquired.

    Raises
    ------
    ValueError
        If a setting is not supported by this backend, or the data cannot be fitted.
    StoreError
        If the store has no acquired line.
    """
    n_lines, n_points, n_wavelengths = store.shape
    done = store.line_done()
    if not done.any():
        raise StoreError(f"store {store.path} has no acquired line to unmix")
    if Loss(loss) is not Loss.FROBENIUS:
        raise ValueError(f'the Dask backend fits the Frobenius loss only, got loss={loss!r}; unmix in memory for "{loss}"')
    if "auto" in spectra:
        auto = [name for name, source in zip(components, spectra) if source == "auto"]
        raise ValueError(
            f'components {auto} take an "auto" spectrum, picked from the whole cube, which the Dask backend '
            "does not read at once; give them library, file, mean or reference spectra, or unmix in memory"
        )
    model = SparseNMF(
        len(components), sparsity=list(sparsity), components=list(components), loss=loss, max_iter=max_iter, tol=tol,
        fixed_spectra=list(fixed), abundance_start=abundance_start, random_state=random_state,
    )  # fmt: skip
    n_components, names, rules, fixed_mask, _ = model._validate(None)

    raw_path = str(store.path / "raw")
    dark = store.dark()
    dark = None if dark is None else dark.astype(np.float32)
    started = time.perf_counter()
    with dask_client(scheduler, n_workers=n_workers, memory_limit=memory_limit) as client:
        limits = [worker.get("memory_limit") or 0 for worker in client.scheduler_info()["workers"].values()]
        if any(limits):
            block_bytes = min(block_bytes, int(min(limit for limit in limits if limit) * _BLOCK_FRACTION_OF_LIMIT))
        lines_per_block = max(1, block_bytes // (n_points * n_wavelengths * 4))
        line_blocks = _line_blocks(done, lines_per_block)
        dark_future = client.scatter(dark, broadcast=True) if dark is not None else None
        log.info(
            "Dask unmixing of %s: %d lines in %d blocks of up to %d lines, %d workers",
            store.path, int(done.sum()), len(line_blocks), lines_per_block, len(client.scheduler_info()["workers"]),
        )  # fmt: skip

        # First pass: saturated pixels, clipped values, and the sums for the start of the fit.
        futures = [client.submit(_moments_task, raw_path, lines, dark_future, saturation_counts, pure=False) for lines in line_blocks]
        moments = _gather(client, futures, pass_timeout_s)
        # NOTE: saturated pixels are gathered on the client for their estimate with S fixed, which
        # assumes that they are few; a badly saturated scan can exhaust the client's memory.
        blocks, prepared, settings_values = _plan_blocks(line_blocks, moments, n_points)
        if settings_values["n_nonfinite"]:
            raise ValueError(
                f"store {store.path} holds {settings_values['n_nonfinite']} NaN or infinite values after dark "
                "subtraction; repair the raw data before unmixing"
            )
        n_fit_rows = settings_values["n_fit_rows"]
        n_pixels = int(done.sum()) * n_points
        if n_fit_rows < 2:
            raise ValueError(f"{n_pixels - n_fit_rows} of {n_pixels} pixels are saturated, which leaves too few to fit")
        if prepared.n_clipped:
            log.info("%d negative values after dark subtraction are clipped to 0", prepared.n_clipped)
        if prepared.fit_rows is not None:
            warnings.warn(
                f"{prepared.masked_rows.size} saturated pixels (of {n_pixels}) were left out of the fit; "
                "their weights are estimated afterwards from their unsaturated wavelengths",
                DataWarning,
                stacklevel=3,
            )

        data_mean = settings_values["sum_all"] / n_pixels
        initial = np.stack(
            [
                initial_spectrum(source, store.wavelengths_nm(), data_mean=data_mean, reference_mean=reference_mean, base_dir=store.path.parent)
                for source in spectra
            ]
        )  # fmt: skip
        S = _check_spectra_init(initial, n_components, n_wavelengths, rules, fixed_mask, names).astype(np.float32)
        settings = _LoopSettings(
            loss=Loss.FROBENIUS,
            rules=rules,
            free=None if not fixed_mask.any() else ~fixed_mask,
            update_spectra=True,
            max_iter=int(max_iter),
            tol=float(tol),
            loss_every=10,
            block_rows=model._block_rows(n_wavelengths, 4),
            n_threads=1,
            gram_loss=False,
            norm_sq=settings_values["norm_sq"],
            column_sums=settings_values["column_sums"],
            compiled=True,
        )
        executor = DaskExecutor(client, raw_path, dark_future, blocks, n_fit_rows, n_wavelengths, settings.block_rows, pass_timeout_s)
        if abundance_start == "lstsq":
            S64 = S.astype(np.float64)
            projector = np.linalg.pinv(S64 @ S64.T).astype(np.float32)
            A_work = executor.least_squares(S, projector).astype(np.float32)
            peak = float(A_work.max())
            if not peak > 0:
                raise ValueError("the initial spectra do not overlap the data; no positive least-squares start exists")
            np.maximum(A_work, _LSTSQ_FLOOR * peak, out=A_work)
        else:
            A_work = _constant_abundance(np.empty((n_fit_rows, 0), dtype=np.float32), S, settings)

        log.info("fitting %d components %s on Dask, sparsity %s, fixed %s", n_components, names, rules, fixed_mask.tolist())
        model.spectra_init_ = S.copy()
        result = _Updater(executor, A_work, S, settings).run()
        A = model._finish(result, prepared, S, settings, n_pixels, stacklevel=3)

        # The residual map uses the unclipped data, like the in-memory path.
        residual = np.concatenate(
            _gather(
                client,
                [
                    client.submit(_residual_task, raw_path, lines, dark_future, A[_pixel_rows(blocks, i, n_pixels)], model.components_, pure=False)
                    for i, lines in enumerate(line_blocks)
                ],
                pass_timeout_s,
            )
        )  # fmt: skip
    log.info("Dask unmixing of %s took %.1f s", store.path, time.perf_counter() - started)
    return model, _to_map(A, done, n_points), _to_map(residual, done, n_points)


def _gather(client: Any, futures: list[Any], timeout_s: float) -> list[Any]:
    """Wait for every future, at most ``timeout_s`` seconds, and return their results in order."""
    from dask.distributed import wait

    wait(futures, timeout=timeout_s)
    return client.gather(futures)


def _pixel_rows(blocks: list[_Block], index: int, n_pixels: int) -> slice:
    end = blocks[index + 1].first_pixel if index + 1 < len(blocks) else n_pixels
    return slice(blocks[index].first_pixel, end)


def _plan_blocks(line_blocks: list[tuple[int, int]], moments: list[dict], n_points: int) -> tuple[list[_Block], _PreparedData, dict]:
    """Combine the first pass's results: the blocks with their row offsets, the saturated pixels and the data's sums."""
    blocks = []
    first_pixel = first_row = 0
    masked_rows, masked_data, masked_weights = [], [], []
    for (start, stop), block in zip(line_blocks, moments):
        blocks.append(_Block(start, stop, first_pixel, first_row, block["fit_mask"]))
        if block["fit_mask"] is not None:
            masked_rows.append(first_pixel + np.flatnonzero(~block["fit_mask"]))
            masked_data.append(block["saturated_data"])
            masked_weights.append(block["saturated_weights"])
        first_pixel += (stop - start) * n_points
        first_row += block["n_fit_rows"]

    values = {
        "n_nonfinite": sum(block["n_nonfinite"] for block in moments),
        "n_fit_rows": first_row,
        "norm_sq": float(sum(block["norm_sq"] for block in moments)),
        "column_sums": np.sum([block["column_sums"] for block in moments], axis=0),
        "sum_all": np.sum([block["sum_all"] for block in moments], axis=0),
    }
    n_clipped = sum(block["n_negative"] for block in moments)
    if not masked_rows:
        prepared = _PreparedData(np.empty((0, 0), np.float32), None, np.empty(0, np.intp), np.empty((0, 0), np.float32), None, n_clipped)
        return blocks, prepared, values
    masked = np.concatenate(masked_rows)
    fit_rows = np.setdiff1d(np.arange(first_pixel), masked)
    prepared = _PreparedData(
        np.empty((0, 0), np.float32), fit_rows, masked, np.concatenate(masked_data), np.concatenate(masked_weights), n_clipped
    )
    return blocks, prepared, values


def _to_map(values: np.ndarray, done: np.ndarray, n_points: int) -> np.ndarray:
    """Place per-pixel values (acquired pixels, ...) on the (y, x, ...) grid, NaN on lines never acquired."""
    grid = np.full((done.size, n_points, *values.shape[1:]), np.nan, dtype=np.float32)
    grid[done] = values.reshape(-1, n_points, *values.shape[1:])
    return grid


def unmix_with_dask(
    store: ScanStore,
    settings: Any,
    saturation_counts: int | None,
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    memory_limit: str | int | None = None,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> None:
    """Unmix a store opened for writing with :func:`fit_store` and write its ``unmixing/`` group.

    ``settings`` is the store's merged :class:`~fluoscan.acquisition.config.UnmixingConfig`; the
    group is written as :func:`fluoscan.unmixing.unmix_store` writes it in memory.
    """
    # store.py imports this module only when the Dask backend is asked for, so this import is not circular.
    from fluoscan.unmixing import store as store_module

    components = list(settings.components)
    raw_dtype = store.raw.dtype
    if saturation_counts is None and np.issubdtype(raw_dtype, np.integer):
        saturation_counts = int(np.iinfo(raw_dtype).max)
    reference_mean = None
    if any(component.spectrum == "reference" for component in components):
        reference_mean = store_module._reference_mean(store)
    model, abundance, residual = fit_store(
        store,
        components=[component.name for component in components],
        spectra=[component.spectrum for component in components],
        sparsity=[component.sparsity for component in components],
        fixed=[component.fixed for component in components],
        max_iter=settings.max_iter,
        tol=settings.tol,
        loss=settings.loss,
        abundance_start=str(getattr(settings.abundance_start, "value", settings.abundance_start)),
        random_state=settings.random_state,
        saturation_counts=saturation_counts,
        reference_mean=reference_mean,
        scheduler=scheduler,
        n_workers=n_workers,
        memory_limit=memory_limit,
        block_bytes=block_bytes,
    )
    A = abundance[store.line_done()].reshape(-1, len(components))
    evidence = store_module.auto_sparsity_evidence(model, A)
    store_module._write_result(store, model, components, settings, abundance, residual, evidence)
    store.write_group_coordinates(store_module.GROUP, [component.name for component in components])
    log.info("wrote %s/%s with the Dask backend: %d iterations", store.path, store_module.GROUP, model.n_iter_)
