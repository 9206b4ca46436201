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
    column: np.ndarray,
    target: float,
    previous: float,
    width: float = INITIAL_WIDTH,
    window: np.ndarray | None = None,
    *,
    matrix: np.ndarray | None = None,
    index: int = 0,
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
    window : ndarray of shape (X,), float64, optional
        Work buffer, so that repeated searches allocate nothing.
    matrix, index : optional
        A C-contiguous (X, P) array whose column ``index`` is ``column``. The compiled scan then
        reads the column from it, which skips numba's slower handling of a strided 1-D view.

    Returns
    -------
    cut : Threshold
        Equal to ``sparsity_threshold(column, target)``.
    width : float
        The half-width to start from at the next iteration, from how far the threshold moved.
    """
    if not compiled.AVAILABLE or not previous > 0 or not math.isfinite(previous):
        return sparsity_threshold(column, target), width
    window = np.empty(column.size) if window is None else window
    if matrix is None or not matrix.flags.c_contiguous:
        matrix, index = np.ascontiguousarray(column).reshape(-1, 1), 0
    for _ in range(_MAX_TRIES):
        low, high = previous * (1.0 - width), previous * (1.0 + width)
        cut = _cut_in_window(matrix, index, target, low, high, window)
        if cut is not None:
            move = abs(cut.threshold - previous) / previous
            return cut, min(max(_MOVE_MARGIN * move, _MIN_WIDTH), _MAX_WIDTH)
        width = min(width * 2, _MAX_WIDTH)
    log.debug("threshold search fell back to a full sort (target %g, previous threshold %g)", target, previous)
    return sparsity_threshold(column, target), INITIAL_WIDTH


def _cut_in_window(
    matrix: np.ndarray, index: int, target: float, low: float, high: float, window: np.ndarray
) -> Threshold | None:
    """Return the closest cut of column ``index`` when the window [low, high) provably contains it, else None."""
    status, n_kept, threshold, peak, sparsity, _ = compiled.window_cut(matrix, index, target, low, high, window, _TIE_TOLERANCE)
    if status == 0:
        return None
    if status == 2:
        return Threshold(threshold=0.0, beta=np.inf, n_kept=0, sparsity=np.nan)
    sparsity = min(max(float(sparsity), 0.0), 1.0)
    if threshold == 0:
        return Threshold(threshold=0.0, beta=np.inf, n_kept=n_kept, sparsity=sparsity)
    return Threshold(threshold=float(threshold), beta=float(peak / threshold), n_kept=n_kept, sparsity=sparsity)
