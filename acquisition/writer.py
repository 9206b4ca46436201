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
        while True:
            record = self._queue.get()
            if record is None:
                return
            if self._error is not None:
                continue  # after a failure, drain without writing; the acquisition loop is stopping
            try:
                self._store.write_line(
                    record.index,
                    record.frame,
                    y_mm=record.y_mm,
                    time_s=record.time_s,
                    laser_power_mw=record.laser_power_mw,
                )
                self.lines_written += 1
            except Exception as exc:  # kept and raised in the acquisition thread
                log.error("writing line %d to %s failed: %s", record.index, self._store.path, exc)
                self._error = exc
                self._failed_line = record.index

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
            return
        except queue.Full:
            pass
        self.waits_for_disk += 1
        started = time.perf_counter()
        log.warning(
            "writer queue full (%d lines): the camera waits for the disk at line %d", self._queue.maxsize, record.index
        )
        while True:
            self.check()
            try:
                self._queue.put(record, timeout=0.1)
                break
            except queue.Full:
                continue
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
