"""Hoyer sparsity and the hard threshold that brings a weight column to a target sparsity.

The Hoyer sparsity of a non-negative vector ``a`` of length X is

    sparsity(a) = (√X − ‖a‖₁ / ‖a‖₂) / (√X − 1),

which is 0 for a constant vector and 1 for a vector with a single non-zero entry.

The sparse NMF step zeroes the entries of a column below ``max(a) / β``. Keeping the k largest
entries gives a sparsity that rises as k falls. So the exact β comes from sorting the column once
and evaluating the sparsity of every cut from cumulative sums of values and of squares, in
O(X log X) and with no grid search over β.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Robust noise scale of a normal distribution from its median absolute deviation.
_MAD_TO_SIGMA = 1.4826
# An "auto" threshold sits this many noise standard deviations above the column's median.
AUTO_THRESHOLD_SIGMAS = 3.0
# Sparsity distances closer than this count as a tie; rounding alone separates them.
_TIE_TOLERANCE = 1e-12
# Fewest of a column's largest entries that the threshold search sorts first.
_MIN_TOP = 256


def hoyer_sparsity(a: np.ndarray, axis: int | None = 0) -> float | np.ndarray:
    """Compute the Hoyer sparsity of a non-negative vector, or of each column of a matrix.

    Parameters
    ----------
    a : array_like
        Non-negative values. A 1-D array gives one number; a 2-D array gives one value per column
        with the default ``axis=0``.
    axis : int or None, default=0
        Axis along which the vectors lie; None treats the whole array as one vector.

    Returns
    -------
    float or ndarray
        Sparsity in [0, 1]; NaN for an all-zero vector, whose sparsity is undefined.

    Raises
    ------
    ValueError
        If ``a`` has negative or non-finite values, or fewer than 2 entries along ``axis``.
    """
    a = np.asarray(a)
    if a.ndim == 1 and axis == 0:
        axis = None
    if axis is None:
        a = a.ravel()
        length = a.size
    else:
        length = a.shape[axis]
    if length < 2:
        raise ValueError(f"Hoyer sparsity needs at least 2 entries along the axis, got {length}")
    if not np.all(np.isfinite(a)):
        raise ValueError("Hoyer sparsity needs finite values; the input contains NaN or infinity")
    if np.any(a < 0):
        raise ValueError(f"Hoyer sparsity needs non-negative values; the minimum is {a.min()!r}")

    work = a.astype(np.float64, copy=False)
    l1 = np.sum(work, axis=axis)
    l2 = np.sqrt(np.sum(work * work, axis=axis))
    root = np.sqrt(length)
    with np.errstate(divide="ignore", invalid="ignore"):
        sparsity = (root - l1 / l2) / (root - 1.0)
    sparsity = np.where(l2 > 0, sparsity, np.nan)
    # Rounding can push a one-hot or constant vector a hair outside [0, 1].
    sparsity = np.clip(sparsity, 0.0, 1.0)
    return float(sparsity) if np.ndim(sparsity) == 0 else sparsity


@dataclass(frozen=True)
class Threshold:
    """The cut that brings one column closest to a target sparsity.

    Attributes
    ----------
    threshold : float
        Entries strictly below this value are set to 0; 0 when nothing is cut.
    beta : float
        ``max(column) / threshold``: the β of the ``max / β`` rule (1 keeps only the maximum,
        ``inf`` keeps everything).
    n_kept : int
        Number of entries kept (non-zero after the cut).
    sparsity : float
        Hoyer sparsity of the column after the cut; NaN for an all-zero column.
    background_median, background_sd, peak : float
        For the "auto" rule only (:func:`noise_threshold`), NaN otherwise: the centre and the robust
        standard deviation of the column's background that the threshold was set from, and the
        column's maximum, which converts them to other units of the weights.
    """

    threshold: float
    beta: float
    n_kept: int
    sparsity: float
    background_median: float = np.nan
    background_sd: float = np.nan
    peak: float = np.nan


def sparsity_threshold(column: np.ndarray, target: float) -> Threshold:
    """Find the hard threshold whose cut gives the sparsity closest to ``target``.

    Candidate cuts keep the k largest entries for every k at which the sorted values strictly
    drop (a threshold cannot separate equal values), from k = 1 up to every non-zero entry.
    The sparsity of each cut comes from the cumulative sums of the sorted values and of their squares.

    Tie rule: when two cuts are equally close to the target (within 1e-12), the denser one (more
    entries kept) wins, so that the step never removes more signal than the target requires.

    The sparsity of a cut depends only on the entries it keeps and falls as k grows. So a high
    target needs only the largest entries, which a partition finds before they are sorted. The
    search widens, up to a full sort, until no larger k can be as close to the target.

    Parameters
    ----------
    column : ndarray of shape (X,)
        Non-negative weights of one component, X ≥ 2.
    target : float
        Target Hoyer sparsity in [0, 1].

    Returns
    -------
    Threshold
        The chosen cut. An all-zero column gives ``Threshold(0.0, inf, 0, nan)``.
    """
    column = np.asarray(column)
    length = column.size
    if length < 2:
        raise ValueError(f"a sparsity threshold needs a column of at least 2 entries, got {length}")
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"sparsity target must be in [0, 1], got {target!r}")
    n_nonzero = int(np.count_nonzero(column > 0))
    if n_nonzero == 0:
        return Threshold(threshold=0.0, beta=np.inf, n_kept=0, sparsity=np.nan)

    root = np.sqrt(length)
    # k entries of equal value have sparsity (√X − √k) / (√X − 1); real columns need a few times more.
    n_top = int(max(_MIN_TOP, 4 * (root - target * (root - 1.0)) ** 2))
    while True:
        exhaustive = n_top + 1 >= n_nonzero
        if exhaustive:
            top = np.sort(column[column > 0])[::-1]
        else:
            top = np.sort(np.partition(column, length - n_top - 1)[length - n_top - 1 :])[::-1]
        top = top.astype(np.float64)
        cut_sparsity = (root - np.cumsum(top) / np.sqrt(np.cumsum(top * top))) / (root - 1.0)

        # A cut after the k-th value is realisable only where the next value is strictly smaller;
        # keeping every non-zero entry is always realisable.
        n_cuts = top.size if exhaustive else n_top
        realisable = np.ones(n_cuts, dtype=bool)
        realisable[: top.size - 1] = top[:n_cuts][: top.size - 1] > top[1 : n_cuts + 1]
        candidates = np.flatnonzero(realisable)
        if candidates.size == 0:  # the largest values are all equal: look further
            n_top *= 8
            continue
        distance = np.abs(cut_sparsity[candidates] - target)
        # Candidates run from sparse (k = 1) to dense, so the last of the closest is the densest cut.
        closest = np.flatnonzero(distance <= distance.min() + _TIE_TOLERANCE)
        best = int(candidates[closest[-1]])
        if exhaustive:
            break
        # Every larger cut is sparser than the one after the n_top-th value, hence farther away.
        beyond = target - cut_sparsity[n_top]
        if beyond > distance[closest[-1]] + _TIE_TOLERANCE:
            break
        n_top *= 8

    n_kept = best + 1
    if n_kept == n_nonzero:
        threshold, beta = 0.0, np.inf
    else:
        threshold = float(top[best])
        beta = float(top[0] / threshold)
    return Threshold(threshold=threshold, beta=beta, n_kept=n_kept, sparsity=float(np.clip(cut_sparsity[best], 0.0, 1.0)))


def noise_threshold(column: np.ndarray, sigmas: float = AUTO_THRESHOLD_SIGMAS) -> Threshold:
    """Find the threshold of the "auto" sparsity rule: the upper edge of the column's background.

    A marker's weight map is a background, which noise and a faint copy of the autofluorescence
    leave in every pixel, plus the few pixels where the marker is. The rule models the background
    as normal. Its centre is the column's median and its standard deviation 1.4826 times the median
    absolute deviation, and both ignore the marker's pixels while they are fewer than half. The
    rule keeps the entries more than ``sigmas`` standard deviations above the centre. With the
    default 3, about 1 background pixel in 740 passes the cut.

    NOTE: not part of the published method, which sets the target by hand. It assumes that fewer
    than half of the pixels carry the marker; above that the median lies on the marker and the
    cut removes part of it.

    Parameters
    ----------
    column : ndarray of shape (X,)
        Non-negative weights of one component.
    sigmas : float, default=AUTO_THRESHOLD_SIGMAS
        Distance of the threshold above the background's centre, in background standard deviations.

    Returns
    -------
    Threshold
        The cut, with the background's median and standard deviation.
    """
    column = np.asarray(column, dtype=np.float64)
    peak = float(column.max(initial=0.0))
    if peak <= 0:
        return Threshold(threshold=0.0, beta=np.inf, n_kept=0, sparsity=np.nan)
    median = float(np.median(column))
    spread = _MAD_TO_SIGMA * float(np.median(np.abs(column - median)))
    threshold = min(median + sigmas * spread, peak)
    kept = column >= threshold
    if threshold <= 0 or kept.all():
        return Threshold(
            threshold=0.0,
            beta=np.inf,
            n_kept=int(np.count_nonzero(column)),
            sparsity=hoyer_sparsity(column),
            background_median=median,
            background_sd=spread,
            peak=peak,
        )
    return Threshold(
        threshold=threshold,
        beta=peak / threshold,
        n_kept=int(np.count_nonzero(kept)),
        sparsity=hoyer_sparsity(column * kept),
        background_median=median,
        background_sd=spread,
        peak=peak,
    )


def apply_threshold(column: np.ndarray, cut: Threshold, out: np.ndarray) -> int:
    """Write ``column`` with the entries below ``cut.threshold`` set to 0 into ``out``.

    Returns
    -------
    int
        Number of non-zero entries that the cut set to 0.
    """
    if cut.threshold <= 0:
        out[...] = column
        return 0
    np.multiply(column, column >= cut.threshold, out=out)
    return int(np.count_nonzero(column)) - cut.n_kept


def threshold_columns(
    A_work: np.ndarray, rules: list[float | str | None], out: np.ndarray
) -> tuple[list[Threshold | None], np.ndarray]:
    """Threshold every column of ``A_work`` that has a sparsity rule, writing the result into ``out``.

    Parameters
    ----------
    A_work : ndarray of shape (n_pixels, n_components)
        Unthresholded weights.
    rules : list of float, "auto" or None
        Per column: a target sparsity in [0, 1], ``"auto"`` for :func:`noise_threshold`, or None to
        copy the column unchanged.
    out : ndarray of the same shape as ``A_work``
        Receives the thresholded weights; it must not be ``A_work`` itself.

    Returns
    -------
    cuts : list of Threshold or None
        The cut applied to each column, None where the column has no rule.
    n_zeroed : ndarray of shape (n_components,), int
        Non-zero entries set to 0 in each column.
    """
    cuts: list[Threshold | None] = []
    n_zeroed = np.zeros(len(rules), dtype=np.int64)
    for p, rule in enumerate(rules):
        column = A_work[:, p]
        if rule is None:
            out[:, p] = column
            cuts.append(None)
            continue
        cut = noise_threshold(column) if rule == "auto" else sparsity_threshold(column, float(rule))
        n_zeroed[p] = apply_threshold(column, cut, out[:, p])
        cuts.append(cut)
    return cuts, n_zeroed
