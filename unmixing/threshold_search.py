"""Warm-started search for the sparsity threshold, with the same result as a full sort.

:func:`fluoscan.unmixing.sparsity.sparsity_threshold` sorts a column to find the cut whose Hoyer
sparsity is closest to the target. Between two iterations of the fit a column changes little, so the
new cut lies near the previous one. :func:`search_threshold` reads the column once, keeps the sums
of the values above a window around the previous threshold and sorts only the values inside the
window. The sparsity of the top-k entries falls as k grows, so when the target's crossing lies inside
the window, no cut outside it can be closer, and the result is the full sort's result. When it does
not, the window widens, and after a few tries the full sort runs instead.
"""

from __future__ import annotations

import logging
import math

import numpy as np

from fluoscan.unmixing import compiled
from fluoscan.unmixing.sparsity import Threshold, sparsity_threshold

log = logging.getLogger(__name__)

# Relative half-width of the first window around the previous threshold, and its bounds.
INITIAL_WIDTH = 0.05
_MIN_WIDTH = 0.002
_MAX_WIDTH = 0.9
# The next window spans this many times the threshold's last relative move on either side: a
# failed window costs a second read of the column, a wide one only a longer sort.
_MOVE_MARGIN = 2.0
# Windows tried before the full sort.
_MAX_TRIES = 6
# Sparsity distances closer than this count as a tie, as in sparsity_threshold.
_TIE_TOLERANCE = 1e-12


def search_threshold(
    column: np.ndarray, target: float, previous: float, width: float = INITIAL_WIDTH, window: np.ndarray | None = None
) -> tuple[Threshold, float]:
    """Find the cut of ``sparsity_threshold(column, target)`` by searching near a previous threshold.

    Parameters
    ----------
    column : ndarray of shape (X,)
        Non-negative weights of one component, X ≥ 2.
    target : float
        Target Hoyer sparsity in [0, 1].
    previous : float
        The column's threshold at the previous iteration; 0 or less runs the full sort.
    width : float, default=0.05
        Relative half-width of the first window, [previous·(1 − width), previous·(1 + width)).
    window : ndarray of shape (1, X), float64, optional
        Work buffer, so that repeated searches allocate nothing.

    Returns
    -------
    cut : Threshold
        Equal to ``sparsity_threshold(column, target)``.
    width : float
        The half-width to start from at the next iteration, from how far the threshold moved.
    """
    matrix = np.ascontiguousarray(column).reshape(-1, 1)
    return search_thresholds(matrix, [0], [target], [previous], [width], window)[0]


def search_thresholds(
    matrix: np.ndarray,
    columns: list[int],
    targets: list[float],
    previous: list[float],
    widths: list[float],
    windows: np.ndarray | None = None,
) -> list[tuple[Threshold, float]]:
    """Run :func:`search_threshold` on several columns of a C-contiguous (X, P) ``matrix``, reading it once.

    ``windows`` is an optional float64 work buffer of shape (at least len(columns), X). Returns one
    (cut, next width) pair per column, in the order of ``columns``.
    """
    length = matrix.shape[0]
    results: list[tuple[Threshold, float] | None] = [None] * len(columns)
    pending = []
    for k, column in enumerate(columns):
        if compiled.AVAILABLE and previous[k] > 0 and math.isfinite(previous[k]):
            pending.append(k)
        else:
            results[k] = (sparsity_threshold(matrix[:, column], targets[k]), widths[k])
    if pending and (windows is None or windows.shape[0] < len(columns) or windows.shape[1] < length):
        windows = np.empty((len(columns), length))
    stats = np.empty((len(columns), 8))
    widths = list(widths)

    for _ in range(_MAX_TRIES):
        if not pending:
            break
        scanned = np.array([columns[k] for k in pending], dtype=np.int64)
        lows = np.array([previous[k] * (1.0 - widths[k]) for k in pending])
        highs = np.array([previous[k] * (1.0 + widths[k]) for k in pending])
        compiled.window_scan(matrix, scanned, lows, highs, windows, stats)
        failed = []
        for row, k in enumerate(pending):
            n_window = int(stats[row, compiled.SCAN_WINDOW])
            cut = _select(windows[row, :n_window], stats[row], targets[k], length)
            if cut is None:
                widths[k] = min(widths[k] * 2, _MAX_WIDTH)
                failed.append(k)
                continue
            move = abs(cut.threshold - previous[k]) / previous[k]
            results[k] = (cut, min(max(_MOVE_MARGIN * move, _MIN_WIDTH), _MAX_WIDTH))
        pending = failed

    for k in pending:
        log.debug("threshold search fell back to a full sort (target %g, previous threshold %g)", targets[k], previous[k])
        results[k] = (sparsity_threshold(matrix[:, columns[k]], targets[k]), INITIAL_WIDTH)
    return results


def _select(window: np.ndarray, stats: np.ndarray, target: float, length: int) -> Threshold | None:
    """Return the closest cut when the scanned window provably contains it, else None."""
    status, n_kept, threshold, peak, sparsity = compiled.window_select(window, stats, target, length, _TIE_TOLERANCE)
    if status == 0:
        return None
    if status == 2:
        return Threshold(threshold=0.0, beta=np.inf, n_kept=0, sparsity=np.nan)
    sparsity = min(max(float(sparsity), 0.0), 1.0)
    if threshold == 0:
        return Threshold(threshold=0.0, beta=np.inf, n_kept=n_kept, sparsity=sparsity)
    return Threshold(threshold=float(threshold), beta=float(peak / threshold), n_kept=n_kept, sparsity=sparsity)
