"""Autofluorescence under the markers, interpolated from the tissue around them, after the sparse fit.

At a marker site the sparse NMF has to split each pixel's spectrum between the autofluorescence and
the marker, and nothing in the cost fixes the split. A little of the autofluorescence spectrum can
move into the marker spectrum, with a matching hole in the autofluorescence map, or the reverse.
Where the autofluorescence spectrum also varies over the animal (the gut of a mouse fed plant-based
food is bluer than its skin), the marker spectrum takes up the local difference too. A marker that
is several times brighter than the tissue under it turns a small error in its spectrum into a large
error in the autofluorescence map there.

This step settles the split with a fact the NMF does not use: the autofluorescence varies slowly
over the animal, so the tissue around a marker shows what lies under it.

1. Sites: the pixels where a marker's weight is at least ``site_fraction`` of its maximum, grown by
   one pixel, split into connected regions.
2. Background: for each region, a quadratic surface in (y, x), fitted wavelength by wavelength
   to the marker-free pixels within ``ring_mm`` of the region, gives the autofluorescence
   spectrum of each site pixel.
3. Marker spectra: the site pixels minus their background, fitted by non-negative least squares
   with the markers' weights held at their fitted values, give each free marker spectrum.
4. Weights at the sites: the background weights are the non-negative least-squares fit of the
   interpolated background to the background spectra, and the marker weights that of the
   remainder to the marker spectra. Weights elsewhere are kept as fitted.

NOTE: not part of the published method. The quadratic surface assumes that the autofluorescence
has no edge within a few mm of a site; a marker at the edge of the body or of an organ with its
own autofluorescence gets a biased background. Saturated entries are left out of every fit.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from enum import Enum

import numpy as np
from scipy import ndimage
from scipy.optimize import nnls

log = logging.getLogger(__name__)

# A pixel belongs to a site where a marker's weight is at least this fraction of its maximum.
SITE_FRACTION = 0.02
# Marker-free pixels within this distance of a site region carry its background.
RING_MM = 2.0
# Minimum number of ring pixels for a region's quadratic background: 6 coefficients with some margin.
MIN_RING_PIXELS = 12


class SiteBackground(str, Enum):
    """Source of the autofluorescence weights and marker spectra at the marker sites."""

    FIT = "fit"  # as the sparse NMF fitted it
    INTERPOLATE = "interpolate"  # from the tissue around each site (this module)


@dataclass
class SiteRefinement:
    """Weights and spectra after the site background step, and what the step did.

    Attributes
    ----------
    abundance : ndarray of shape (n_pixels, n_components)
    spectra : ndarray of shape (n_components, n_wavelengths)
    n_regions : int
        Site regions whose background was interpolated.
    n_site_pixels : int
        Pixels in those regions.
    skipped_regions : list of int
        Pixel counts of the regions left as fitted, because they had fewer than
        ``MIN_RING_PIXELS`` usable pixels around them.
    """

    abundance: np.ndarray
    spectra: np.ndarray
    n_regions: int = 0
    n_site_pixels: int = 0
    skipped_regions: list[int] = field(default_factory=list)

    def summary(self, site_fraction: float, ring_mm: float) -> dict:
        """Describe the step for the store's attributes."""
        return {
            "method": SiteBackground.INTERPOLATE.value,
            "site_fraction": site_fraction,
            "ring_mm": ring_mm,
            "n_regions": self.n_regions,
            "n_site_pixels": self.n_site_pixels,
            "skipped_regions": self.skipped_regions,
        }


def site_mask(A: np.ndarray, S: np.ndarray, markers: list[int], shape: tuple[int, int], site_fraction: float) -> np.ndarray:
    """Return the (rows, points) mask of marker sites: weights at least ``site_fraction`` of their maximum, grown by one pixel."""
    counts = A[:, markers] * S[markers].max(axis=1)
    sites = np.zeros(shape, dtype=bool)
    for column in counts.T:
        peak = column.max(initial=0.0)
        if peak > 0:
            sites |= (column >= site_fraction * peak).reshape(shape)
    return ndimage.binary_dilation(sites)


def _quadratic_design(y_mm: np.ndarray, x_mm: np.ndarray, centre: tuple[float, float], scale_mm: float) -> np.ndarray:
    u = (y_mm - centre[0]) / scale_mm
    v = (x_mm - centre[1]) / scale_mm
    return np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v])


def interpolate_background(
    M: np.ndarray,
    sites: np.ndarray,
    y_mm: np.ndarray,
    x_mm: np.ndarray,
    usable: np.ndarray,
    ring_mm: float,
) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    """Interpolate the spectra at the site pixels from a quadratic surface fitted to the pixels around each region.

    Parameters
    ----------
    M : ndarray of shape (rows * points, n_wavelengths)
        The data, row by row.
    sites : ndarray of shape (rows, points), bool
    y_mm, x_mm : ndarray of shape (rows,) and (points,)
        Positions of the rows (stage axis) and of the points along the slit.
    usable : ndarray of shape (rows * points,), bool
        Pixels that may carry a background (no saturated entry).
    ring_mm : float
        Width of the band of marker-free pixels around each region.

    Returns
    -------
    background : ndarray of shape (n_interpolated, n_wavelengths)
        The interpolated spectra of the site pixels whose region had enough pixels around it.
    interpolated : ndarray of shape (rows * points,), bool
        Those pixels.
    n_regions : int
        Regions interpolated.
    skipped : list of int
        Pixel counts of the regions left out.
    """
    shape = sites.shape
    labels, n_regions = ndimage.label(sites)
    pitch_mm = (_median_step(y_mm), _median_step(x_mm))
    rows_mm, points_mm = np.meshgrid(y_mm, x_mm, indexing="ij")
    rows_mm, points_mm = rows_mm.ravel(), points_mm.ravel()
    usable_grid = usable.reshape(shape)

    background = np.zeros_like(M, dtype=np.float64)
    interpolated = np.zeros(M.shape[0], dtype=bool)
    skipped: list[int] = []
    for label in range(1, n_regions + 1):
        region = labels == label
        distance_mm = ndimage.distance_transform_edt(~region, sampling=pitch_mm)
        ring = (~sites & usable_grid & (distance_mm <= ring_mm)).ravel()
        if np.count_nonzero(ring) < MIN_RING_PIXELS:
            skipped.append(int(region.sum()))
            continue
        inside = region.ravel()
        centre = (float(rows_mm[inside].mean()), float(points_mm[inside].mean()))
        scale_mm = max(float(np.ptp(rows_mm[ring])), float(np.ptp(points_mm[ring])), 1e-9)
        design = _quadratic_design(rows_mm[ring], points_mm[ring], centre, scale_mm)
        coefficients, *_ = np.linalg.lstsq(design, np.asarray(M[ring], dtype=np.float64), rcond=None)
        background[inside] = _quadratic_design(rows_mm[inside], points_mm[inside], centre, scale_mm) @ coefficients
        interpolated |= inside
    if skipped:
        log.warning(
            "site background: %d of %d marker site regions (%s pixels) have fewer than %d usable pixels within "
            "%g mm around them and keep the fitted autofluorescence",
            len(skipped), n_regions, skipped, MIN_RING_PIXELS, ring_mm,
        )  # fmt: skip
    return background[interpolated], interpolated, n_regions - len(skipped), skipped


def _median_step(positions: np.ndarray) -> float:
    steps = np.abs(np.diff(np.asarray(positions, dtype=np.float64)))
    steps = steps[steps > 0]
    return float(np.median(steps)) if steps.size else 1.0


def refine_site_background(
    M: np.ndarray,
    A: np.ndarray,
    S: np.ndarray,
    *,
    markers: list[int],
    fixed: list[bool],
    shape: tuple[int, int],
    y_mm: np.ndarray,
    x_mm: np.ndarray,
    saturated: np.ndarray | None = None,
    site_fraction: float = SITE_FRACTION,
    ring_mm: float = RING_MM,
) -> SiteRefinement:
    """Re-estimate the autofluorescence at the marker sites from the tissue around them (see the module documentation).

    Parameters
    ----------
    M : ndarray of shape (n_pixels, n_wavelengths)
        Dark-subtracted data, ``shape[0]`` rows of ``shape[1]`` points.
    A : ndarray of shape (n_pixels, n_components)
        Fitted weights, in counts at the peak of each spectrum.
    S : ndarray of shape (n_components, n_wavelengths)
        Fitted spectra.
    markers : list of int
        The marker components (those with a sparsity rule); the others are background.
    fixed : list of bool
        Per component, whether its spectrum stays as it is.
    shape : (rows, points)
    y_mm, x_mm : ndarray of shape (rows,) and (points,)
        Positions of the rows and of the points, in mm.
    saturated : ndarray of shape (n_pixels, n_wavelengths), bool, optional
        Saturated entries, left out of every fit.
    site_fraction, ring_mm : float
        See :data:`SITE_FRACTION` and :data:`RING_MM`.

    Returns
    -------
    SiteRefinement
    """
    background_components = [p for p in range(S.shape[0]) if p not in markers]
    A = np.array(A, dtype=np.float64)
    S = np.array(S, dtype=np.float64)
    if not markers or not background_components:
        return SiteRefinement(A, S)

    sites = site_mask(A, S, markers, shape, site_fraction)
    usable = np.ones(M.shape[0], dtype=bool) if saturated is None else ~saturated.any(axis=1)
    background, interpolated, n_regions, skipped = interpolate_background(M, sites, y_mm, x_mm, usable, ring_mm)
    result = SiteRefinement(A, S, n_regions=n_regions, n_site_pixels=int(interpolated.sum()), skipped_regions=skipped)
    if not interpolated.any():
        return result

    remainder = np.asarray(M[interpolated], dtype=np.float64) - background
    valid = np.ones_like(remainder, dtype=bool) if saturated is None else ~saturated[interpolated]
    marker_weights = A[interpolated][:, markers]
    result.spectra[markers] = _marker_spectra(remainder, valid, marker_weights, S[markers], [fixed[p] for p in markers])

    marker_spectra = result.spectra[markers]
    background_spectra = result.spectra[background_components]
    weights = np.empty((remainder.shape[0], S.shape[0]))
    for i in range(remainder.shape[0]):
        weights[i, background_components] = nnls(background_spectra.T, background[i])[0]
        keep = valid[i]
        if keep.any():
            weights[i, markers] = nnls(marker_spectra[:, keep].T, remainder[i, keep])[0]
        else:
            weights[i, markers] = marker_weights[i]
    result.abundance[interpolated] = weights
    log.info(
        "site background: interpolated the autofluorescence under %d pixels in %d regions",
        result.n_site_pixels, result.n_regions,
    )  # fmt: skip
    return result


def _marker_spectra(
    remainder: np.ndarray, valid: np.ndarray, weights: np.ndarray, spectra: np.ndarray, fixed: list[bool]
) -> np.ndarray:
    """Fit the free marker spectra to the background-free site pixels, wavelength by wavelength, with the weights held."""
    spectra = spectra.copy()
    free = [q for q in range(spectra.shape[0]) if not fixed[q]]
    kept_fixed = [q for q in range(spectra.shape[0]) if fixed[q]]
    if not free:
        return spectra
    target = remainder - weights[:, kept_fixed] @ spectra[kept_fixed] if kept_fixed else remainder
    fitted = np.empty((len(free), spectra.shape[1]))
    for w in range(spectra.shape[1]):
        rows = valid[:, w]
        fitted[:, w] = nnls(weights[rows][:, free], target[rows, w])[0] if rows.any() else 0.0
    for index, q in enumerate(free):
        peak = fitted[index].max(initial=0.0)
        if peak > 0:
            spectra[q] = fitted[index] / peak
        else:
            log.warning("site background: marker component %d got a zero spectrum at its sites; it keeps the fitted one", q)
    return spectra
