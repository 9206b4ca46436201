"""Scores of an unmixing result against a reference: spectral angles, matching, map errors, residuals.

Estimated components come out of NMF in an arbitrary order and scale. So they are first matched to
the reference components by spectral angle (:func:`match_components`), and the scores used here
(angles, unit-sum abundances, correlations) do not depend on scale.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment

# Rows per block when residuals are computed, so that no temporary of the size of M is formed.
_RESIDUAL_BLOCK_ROWS = 4096


def spectral_angle(a: np.ndarray, b: np.ndarray) -> float | np.ndarray:
    """Compute the spectral angle arccos(⟨a, b⟩ / (‖a‖ ‖b‖)) in radians.

    Parameters
    ----------
    a, b : array_like of shape (..., n_wavelengths)
        Spectra, compared along the last axis; leading axes broadcast.

    Returns
    -------
    float or ndarray
        Angle in [0, π]; NaN where either spectrum is zero.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"spectra have {a.shape[-1]} and {b.shape[-1]} wavelengths; they must match")
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cosine = np.sum(a * b, axis=-1) / norms
    angle = np.where(norms > 0, np.arccos(np.clip(cosine, -1.0, 1.0)), np.nan)
    return float(angle) if angle.ndim == 0 else angle


def spectral_angle_matrix(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Return the angles (radians) between every reference spectrum (rows) and every estimated one (columns)."""
    reference = np.atleast_2d(np.asarray(reference, dtype=np.float64))
    estimate = np.atleast_2d(np.asarray(estimate, dtype=np.float64))
    return spectral_angle(reference[:, None, :], estimate[None, :, :])


class Matching(NamedTuple):
    """Pairs of reference and estimated components, and the angle of each pair."""

    reference: np.ndarray
    estimate: np.ndarray
    angle: np.ndarray

    @property
    def mean_angle(self) -> float:
        """Mean spectral angle (SAD) over the matched pairs, in radians."""
        return float(np.mean(self.angle))

    def order(self, n_reference: int) -> np.ndarray:
        """Return, for each reference component, the index of its estimated component (-1 if unmatched)."""
        order = np.full(n_reference, -1)
        order[self.reference] = self.estimate
        return order


def match_components(reference_spectra: np.ndarray, estimated_spectra: np.ndarray) -> Matching:
    """Match estimated to reference components so that the sum of spectral angles is least (Hungarian method).

    Parameters
    ----------
    reference_spectra : array_like of shape (n_reference, n_wavelengths)
    estimated_spectra : array_like of shape (n_estimated, n_wavelengths)

    Returns
    -------
    Matching
        ``min(n_reference, n_estimated)`` pairs, sorted by reference index.
    """
    angles = spectral_angle_matrix(reference_spectra, estimated_spectra)
    if np.isnan(angles).any():
        raise ValueError("a spectrum is zero everywhere, so its spectral angle is undefined")
    rows, columns = linear_sum_assignment(angles)
    return Matching(reference=rows, estimate=columns, angle=angles[rows, columns])


def _normalised_to_unit_sum(abundance: np.ndarray) -> np.ndarray:
    totals = abundance.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, abundance / totals, 0.0)


def abundance_rmse(reference: np.ndarray, estimate: np.ndarray, *, sum_to_one: bool = True) -> float:
    """Compute the root-mean-square difference between two abundance arrays of matched components.

    Parameters
    ----------
    reference, estimate : array_like of shape (..., n_components)
        Abundances with the components on the last axis, in the same order (see
        :meth:`Matching.order`).
    sum_to_one : bool, default=True
        Scale each pixel's abundances to a unit sum first (pixels summing to 0 stay 0), which
        removes brightness differences between pixels and the arbitrary NMF scale.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"abundance shapes differ: reference {reference.shape}, estimate {estimate.shape}")
    if sum_to_one:
        reference = _normalised_to_unit_sum(reference)
        estimate = _normalised_to_unit_sum(estimate)
    return float(np.sqrt(np.mean((reference - estimate) ** 2)))


def map_correlation(reference: np.ndarray, estimate: np.ndarray) -> np.ndarray:
    """Compute the Pearson correlation of each component's map between reference and estimate.

    Parameters
    ----------
    reference, estimate : array_like of shape (..., n_components)
        Abundance maps with the components on the last axis, in the same order.

    Returns
    -------
    ndarray of shape (n_components,)
        Correlation per component; NaN where a map is constant.
    """
    reference = np.asarray(reference, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if reference.shape != estimate.shape:
        raise ValueError(f"abundance shapes differ: reference {reference.shape}, estimate {estimate.shape}")
    x = reference.reshape(-1, reference.shape[-1])
    y = estimate.reshape(-1, estimate.shape[-1])
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    denominator = np.sqrt(np.sum(x * x, axis=0) * np.sum(y * y, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, np.sum(x * y, axis=0) / denominator, np.nan)


def residual_map(M: np.ndarray, A: np.ndarray, S: np.ndarray, *, relative: bool = False) -> np.ndarray:
    """Compute each pixel's residual norm ‖m − a S‖ over wavelengths.

    Parameters
    ----------
    M : ndarray of shape (n_pixels, n_wavelengths)
    A : ndarray of shape (n_pixels, n_components)
    S : ndarray of shape (n_components, n_wavelengths)
    relative : bool, default=False
        False: the norm in the data's units (counts for a scan). True: divided by ‖m‖, NaN where
        the pixel's spectrum is zero.

    Returns
    -------
    ndarray of shape (n_pixels,), float64
    """
    if M.shape[0] != A.shape[0] or A.shape[1] != S.shape[0] or M.shape[1] != S.shape[1]:
        raise ValueError(f"shapes do not fit M ≈ A S: M {M.shape}, A {A.shape}, S {S.shape}")
    residual = np.empty(M.shape[0])
    data_norm = np.empty(M.shape[0]) if relative else None
    for start in range(0, M.shape[0], _RESIDUAL_BLOCK_ROWS):
        rows = slice(start, start + _RESIDUAL_BLOCK_ROWS)
        block = np.asarray(M[rows], dtype=np.float64)
        difference = block - np.asarray(A[rows], dtype=np.float64) @ np.asarray(S, dtype=np.float64)
        residual[rows] = np.sqrt(np.einsum("ij,ij->i", difference, difference))
        if data_norm is not None:
            data_norm[rows] = np.sqrt(np.einsum("ij,ij->i", block, block))
    if data_norm is None:
        return residual
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(data_norm > 0, residual / data_norm, np.nan)


class TruthScores(NamedTuple):
    """Scores of an unmixing result against a known truth, per reference component.

    Attributes
    ----------
    names : list of str
        Reference component names, in the reference's order.
    order : ndarray of shape (n_reference,)
        Index of the estimated component matched to each reference component.
    spectral_angle : ndarray of shape (n_reference,)
        Angle in radians between each reference spectrum and its matched estimate.
    correlation : ndarray of shape (n_reference,)
        Pearson correlation of each reference map with its matched estimate.
    background_error : float
        Mean of the estimated background map over the marker sites, relative to the truth's mean
        there, minus 1: negative where the background has holes at the sites. NaN without sites.
    background_worst : float
        Largest relative error of the background map at a single site pixel.
    n_sites : int
        Pixels counted as marker sites.
    """

    names: list[str]
    order: np.ndarray
    spectral_angle: np.ndarray
    correlation: np.ndarray
    background_error: float
    background_worst: float
    n_sites: int

    @property
    def mean_angle(self) -> float:
        """Mean spectral angle (SAD) over the reference components, in radians."""
        return float(np.mean(self.spectral_angle))


def compare_to_truth(
    truth_abundance: np.ndarray,
    truth_spectra: np.ndarray,
    abundance: np.ndarray,
    spectra: np.ndarray,
    *,
    names: list[str] | None = None,
    background: int = 0,
    site_fraction: float = 0.5,
) -> TruthScores:
    """Score unmixed maps and spectra against the truth, after matching components by spectral angle.

    NMF fixes each component only up to a factor shared by its map and its spectrum. So each map,
    of the truth and of the estimate alike, is first multiplied by its spectrum's peak, which puts
    both in counts at the peak of the spectrum. Free spectra of :class:`SparseNMF` and the
    phantom's truth already have a peak of 1. Pixels that are NaN in either map (lines never
    acquired) are left out.

    Parameters
    ----------
    truth_abundance : array_like of shape (..., n_reference)
    truth_spectra : array_like of shape (n_reference, n_wavelengths)
    abundance : array_like of shape (..., n_estimated)
    spectra : array_like of shape (n_estimated, n_wavelengths)
    names : list of str, optional
        Reference component names; default ``component_0``, ...
    background : int, default=0
        Index of the background (autofluorescence) among the reference components; every other
        reference component is a marker.
    site_fraction : float, default=0.5
        A pixel is a marker site where a marker's true weight is at least this fraction of that
        marker's maximum.

    Returns
    -------
    TruthScores
    """
    truth_spectra = np.atleast_2d(np.asarray(truth_spectra, dtype=np.float64))
    spectra = np.atleast_2d(np.asarray(spectra, dtype=np.float64))
    n_reference = truth_spectra.shape[0]
    if not 0 <= background < n_reference:
        raise ValueError(f"background index {background} is outside the {n_reference} reference components")
    if not 0.0 < site_fraction <= 1.0:
        raise ValueError(f"site_fraction must be in (0, 1], got {site_fraction}")
    # The matching's pairs are sorted by reference index, so its angles follow the reference's order.
    matching = match_components(truth_spectra, spectra)
    if matching.reference.size < n_reference:
        raise ValueError(f"{spectra.shape[0]} estimated components cannot match {n_reference} reference components")
    order = matching.order(n_reference)

    truth = np.asarray(truth_abundance, dtype=np.float64).reshape(-1, n_reference) * truth_spectra.max(axis=1)
    estimate = np.asarray(abundance, dtype=np.float64).reshape(-1, spectra.shape[0]) * spectra.max(axis=1)
    estimate = estimate[:, order]
    valid = np.all(np.isfinite(truth), axis=1) & np.all(np.isfinite(estimate), axis=1)
    truth, estimate = truth[valid], estimate[valid]

    markers = [p for p in range(n_reference) if p != background]
    sites = np.zeros(truth.shape[0], dtype=bool)
    for p in markers:
        sites |= truth[:, p] >= site_fraction * truth[:, p].max(initial=0.0)
    sites &= truth[:, background] > 0
    if sites.any():
        true_background = truth[sites, background]
        error = estimate[sites, background] - true_background
        background_error = float(error.mean() / true_background.mean())
        background_worst = float(np.max(np.abs(error) / true_background))
    else:
        background_error = background_worst = float("nan")

    return TruthScores(
        names=list(names) if names is not None else [f"component_{p}" for p in range(n_reference)],
        order=order,
        spectral_angle=np.asarray(matching.angle),
        correlation=map_correlation(truth, estimate),
        background_error=background_error,
        background_worst=background_worst,
        n_sites=int(sites.sum()),
    )
