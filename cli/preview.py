"""The live scan preview: ``<store>-preview.png``, redrawn from the lines acquired so far."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from fluoscan.acquisition.store import ScanStore
from fluoscan.cli import figures
from fluoscan.cli.report_data import _done_blocks, map_axes_of

log = logging.getLogger(__name__)

# After the last line is queued, the preview waits this long for the writer to store it.
FINAL_WAIT_S = 10.0
_FINAL_POLL_S = 0.1


def preview_path(store_path: str | Path) -> Path:
    """Return the scan preview's path, ``<store>-preview.png`` next to the store."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}-preview.png")


class PreviewWriter:
    """Redraw ``<store>-preview.png`` with the lines acquired so far, every ``every`` lines.

    Pass an instance as ``run_scan(..., on_line=PreviewWriter(store, every=10))``. A call only
    starts a drawing thread and returns, so the scan loop does not wait for matplotlib. A drawing
    took 0.1 to 0.3 s on a 2-core test machine. Requests made while a drawing runs are merged
    into one more drawing. Each drawing reads only the lines written since the previous one.
    A call logs its failures and never raises them into the scan.

    Parameters
    ----------
    store_path : path
        The store the scan writes.
    every : int
        Redraw after every ``every`` lines, and after the store's last line. The drawing after the
        last line waits up to :data:`FINAL_WAIT_S` for the writer to store every line, and the
        program's exit waits for that drawing (its thread is not a daemon).
    """

    def __init__(self, store_path: str | Path, every: int) -> None:
        if every < 1:
            raise ValueError(f"preview interval must be at least 1 line, got {every}")
        self.store_path = Path(store_path)
        self.every = every
        self.path = preview_path(self.store_path)
        self._calls = 0
        self._failures = 0
        self._n_lines: int | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pending = False
        self._last_line_queued = False
        self._store: ScanStore | None = None
        self._image = np.empty((0, 0))
        self._dark_mean: np.ndarray | None = None
        self._read = np.zeros(0, dtype=bool)

    def __call__(self, line_index: int) -> None:
        try:
            self._calls += 1
            if self._store is None:
                # Opening reads only metadata, and it gives the index of the last line.
                self._open()
            if line_index == self._n_lines - 1:
                self._last_line_queued = True
            elif self._calls % self.every:
                return
            with self._lock:
                if self._worker is not None:
                    self._pending = True
                    return
                # Not a daemon: a drawing under way at the end of the scan finishes before exit.
                self._worker = threading.Thread(target=self._draw_until_idle, name="fluoscan-preview")
                self._worker.start()
        except Exception as exc:  # noqa: BLE001 - any failure here must leave the scan running
            self._log_failure(exc)

    @property
    def image(self) -> np.ndarray:
        """The preview's (y, x) image in counts: dark-subtracted mean over wavelength, NaN where not read yet."""
        return self._image

    def wait(self, timeout_s: float) -> bool:
        """Wait for the drawing under way, if any; return False if it is still running after ``timeout_s``."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
            return not worker.is_alive()
        return True

    def _draw_until_idle(self) -> None:
        while True:
            try:
                self.draw()
                if self._last_line_queued and self._wait_for_unread_lines():
                    # The scan calls the preview when a line is queued for the writer, so the last
                    # lines reach the disk after the last call: draw once more when they have.
                    self.draw()
            except Exception as exc:  # noqa: BLE001 - logged; the next request tries again
                self._log_failure(exc)
            with self._lock:
                if not self._pending:
                    self._worker = None
                    return
                self._pending = False

    def _wait_for_unread_lines(self) -> bool:
        """Wait until every line is written, up to FINAL_WAIT_S; return True if any line is unread."""
        deadline = time.monotonic() + FINAL_WAIT_S
        done = self._store.line_done()
        while not done.all() and time.monotonic() < deadline:
            time.sleep(_FINAL_POLL_S)
            done = self._store.line_done()
        return bool((done & ~self._read).any())

    def _log_failure(self, exc: Exception) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 or self._failures % 100 == 0 else logging.DEBUG
        log.log(level, "scan preview %s not updated (failure %d): %s", self.path, self._failures, exc)

    def _open(self) -> ScanStore:
        if self._store is None:
            store = ScanStore.open(self.store_path)
            n_lines, n_points, _ = store.shape
            self._image = np.full((n_lines, n_points), np.nan)
            self._read = np.zeros(n_lines, dtype=bool)
            dark = store.dark()
            self._dark_mean = dark.mean(axis=1) if dark is not None else None
            self._store, self._n_lines = store, n_lines
        return self._store

    def draw(self) -> Path:
        """Read the lines written since the last drawing and redraw the preview now, in this thread."""
        store = self._open()
        new = store.line_done() & ~self._read
        for block in _done_blocks(new):
            lines = np.flatnonzero(new[block]) + block.start
            means = np.asarray(store.raw[block], dtype=np.float64).mean(axis=2)[lines - block.start]
            self._image[lines] = means - self._dark_mean if self._dark_mean is not None else means
            self._read[lines] = True

        map_axes = map_axes_of(store)
        width, height = figures.map_panel_size(map_axes, 1)
        figure = Figure(figsize=(width, height + 0.3), layout="constrained")
        n_done, n_lines = int(self._read.sum()), len(self._read)
        figures.draw_map(
            figure,
            figure.subplots(),
            self._image,
            map_axes,
            title=f"{self.store_path.name}: {n_done} of {n_lines} lines\nmean over wavelength",
            colour_label="counts",
            limits=figures.robust_limits(self._image),
        )
        partial = self.path.with_name(f".{self.path.name}.partial")
        figure.savefig(partial, dpi=80, format="png")
        os.replace(partial, self.path)
        return self.path
