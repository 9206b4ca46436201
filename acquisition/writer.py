"""A writer thread that takes acquired lines from a bounded queue and writes them to the store.

The camera loop only waits for the disk when the queue is full, and that wait is logged. A writer
error is kept and raised to the acquisition loop at its next :meth:`LineWriter.put` or at
:meth:`LineWriter.close`, so the scan stops cleanly with the laser off.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass

import numpy as np

from fluoscan.acquisition.store import ScanStore

log = logging.getLogger(__name__)

# Most lines written in one go when the writer has fallen behind.
_MAX_BATCH_LINES = 64


class WriterError(RuntimeError):
    """The writer thread failed to write a line to the store."""


@dataclass(frozen=True)
class LineRecord:
    """One acquired line and the readbacks taken with it."""

    index: int
    frame: np.ndarray
    y_mm: float
    time_s: float
    laser_power_mw: float


class LineWriter:
    """Write :class:`LineRecord` objects to a :class:`ScanStore` from a background thread.

    Use as a context manager; leaving the block writes every line still queued (also when the
    block ends with an exception) before returning.
    """

    def __init__(self, store: ScanStore, max_queue_lines: int) -> None:
        self._store = store
        # None is the stop signal.
        self._queue: queue.Queue[LineRecord | None] = queue.Queue(maxsize=max_queue_lines)
        self._error: BaseException | None = None
        self._failed_line: int | None = None
        self._thread = threading.Thread(target=self._run, name="fluoscan-writer", daemon=True)
        self.lines_written = 0
        self.waits_for_disk = 0
        self.wait_for_disk_s = 0.0

    def __enter__(self) -> LineWriter:
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(raise_error=exc is None)

    def _run(self) -> None:
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            # Take whatever else is already queued: consecutive lines share their metadata writes.
            while len(batch) < _MAX_BATCH_LINES and batch[-1] is not None:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is None:
                stopping = True
                batch.pop()
            if batch and self._error is None:
                self._write(batch)

    def _write(self, batch: list[LineRecord]) -> None:
        try:
            self._write_lines(batch)
            return
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            log.warning("writing lines %d..%d together failed (%s); writing them one by one", batch[0].index, batch[-1].index, exc)
        # Line by line, so that every line before the failing one is kept.
        for record in batch:
            try:
                self._write_lines([record])
            except Exception as exc:
                self._fail(record, exc)
                return

    def _write_lines(self, batch: list[LineRecord]) -> None:
        self._store.write_lines(
            [record.index for record in batch],
            np.stack([record.frame for record in batch]),
            y_mm=[record.y_mm for record in batch],
            time_s=[record.time_s for record in batch],
            laser_power_mw=[record.laser_power_mw for record in batch],
        )
        self.lines_written += len(batch)

    def _fail(self, record: LineRecord, exc: Exception) -> None:
        """Keep the error for the acquisition thread; later lines are drained without writing."""
        log.error("writing line %d to %s failed: %s", record.index, self._store.path, exc)
        self._failed_line = record.index
        self._error = exc

    def check(self) -> None:
        """Raise :class:`WriterError` if the writer thread has failed."""
        if self._error is not None:
            raise WriterError(
                f"writing line {self._failed_line} to {self._store.path} failed: {self._error}"
            ) from self._error

    def put(self, record: LineRecord) -> None:
        """Queue a line for writing; blocks (and logs it) only while the queue is full."""
        self.check()
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._wait_for_room(record)

    def _wait_for_room(self, record: LineRecord) -> None:
        self.waits_for_disk += 1
        started = time.perf_counter()
        if self.waits_for_disk == 1 or self.waits_for_disk % 100 == 0:
            log.warning(
                "writer queue full (%d lines): the camera waits for the disk at line %d (%d waits so far)",
                self._queue.maxsize,
                record.index,
                self.waits_for_disk,
            )
        queued = False
        while not queued:
            # Wake up regularly to notice a writer that failed while the queue was full.
            self.check()
            try:
                self._queue.put(record, timeout=0.1)
                queued = True
            except queue.Full:
                queued = False
        self.wait_for_disk_s += time.perf_counter() - started

    def close(self, raise_error: bool = True) -> None:
        """Write every queued line, stop the thread, and raise a writer error if there was one."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()
        if self._error is not None:
            pending = self._queue.qsize()
            if pending:
                log.error("%d acquired lines were not written because the writer failed", pending)
            if raise_error:
                self.check()
