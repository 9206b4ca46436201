"""Scan progress for the command line: a progress bar on a terminal, log lines otherwise."""

from __future__ import annotations

import sys

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from fluoscan.acquisition.scan import LogProgress


class BarProgress:
    """A rich progress bar with lines done, rate and estimated time left."""

    def __init__(self) -> None:
        self._bar = Progress(
            TextColumn("scan"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("lines  {task.fields[rate]}"),
            TimeRemainingColumn(),
            transient=False,
        )
        self._task: TaskID | None = None
        self._done_at_start = 0

    def start(self, total_lines: int, done_lines: int) -> None:
        self._bar.start()
        self._done_at_start = done_lines
        self._task = self._bar.add_task("scan", total=total_lines, completed=done_lines, rate="")

    def line_done(self, index: int) -> None:
        if self._task is None:
            return
        task = self._bar.tasks[0]
        elapsed = task.elapsed or 0.0
        new_lines = task.completed + 1 - self._done_at_start
        rate = f"{new_lines / elapsed:.1f}/s" if elapsed > 0 else ""
        self._bar.update(self._task, advance=1, rate=rate)

    def close(self) -> None:
        self._bar.stop()

    def __enter__(self) -> BarProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _LogProgressContext(LogProgress):
    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def make_progress() -> BarProgress | _LogProgressContext:
    """Return a progress bar when stderr is a terminal, else progress as log lines."""
    return BarProgress() if sys.stderr.isatty() else _LogProgressContext()
