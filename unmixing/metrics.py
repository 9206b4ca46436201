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
