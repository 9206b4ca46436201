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

1. Sites: the connected regions of pixels where a marker's weight is at least ``site_fraction``
   of its maximum and reaches ``CORE_FRACTION`` of it somewhere, grown by one pixel.
2. Background: for each region, a quadratic surface in (y, x), fitted wavelength by wavelength
   to the marker-free pixels within ``ring_mm`` of the region, gives the autofluorescence
   spectrum of each site pixel. A region whose fitted marker light is below ``MIN_CONTRAST``
   times that background keeps its fit, because there the interpolation error would outweigh
   what it corrects.
3. Marker spectra: the site pixels minus their background give the marker spectra, by
   non-negative least squares with the markers' weights held at their fitted values. Only the
   spectra that are not fixed and have most of their light (``MIN_LIGHT_SHARE``) in the
   interpolated regions change.
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

# A pixel belongs to a site where a marker's weight is at least this fraction of its maximum...
SITE_FRACTION = 0.02
# ... in a connected region that reaches this fraction of the maximum.
CORE_FRACTION = 0.25
# Marker-free pixels within this distance of a site region carry its background.
RING_MM = 2.0
# Minimum number of ring pixels for a region's quadratic background: 6 coefficients with some margin.
MIN_RING_PIXELS = 12
# A region is interpolated only where the fitted marker light there is at least this multiple of the
# interpolated background, because an interpolation error of 1 to 2 % of the background then stays
# small against the marker. NOTE: set from the phantom (bench/bench_quality.py): the step helped
# regions of ratio 0.98 and above and harmed regions of 0.29 and below.
MIN_CONTRAST = 0.5
# A marker spectrum is refitted only when the interpolated regions hold at least this share of the
# marker's fitted light, because fewer pixels would fit its spectrum poorly.
MIN_LIGHT_SHARE = 0.5


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
    faint_regions : list of dict
        Pixel count (``n_pixels``) and marker-to-background ratio (``contrast``) of the regions left
        as fitted because the ratio is below ``MIN_CONTRAST``.
    """

    abundance: np.ndarray
    spectra: np.ndarray
    n_regions: int = 0
    n_site_pixels: int = 0
    skipped_regions: list[int] = field(default_factory=list)
    faint_regions: list[dict] = field(default_factory=list)

    def summary(self, site_fraction: float, ring_mm: float) -> dict:
        """Describe the step for the store's attributes."""
        return {
            "method": SiteBackground.INTERPOLATE.value,
            "site_fraction": site_fraction,
            "ring_mm": ring_mm,
            "n_regions": self.n_regions,
            "n_site_pixels": self.n_site_pixels,
            "skipped_regions": self.skipped_regions,
            "faint_regions": self.faint_regions,
            "min_contrast": MIN_CONTRAST,
        }


def site_mask(A: np.ndarray, S: np.ndarray, markers: list[int], shape: tuple[int, int], site_fraction: float) -> np.ndarray:
    """Return the (rows, points) mask of marker sites, grown by one pixel.

    A site is a connected region of pixels where a marker's weight is at least ``site_fraction`` of
    its maximum and that reaches ``CORE_FRACTION`` of it somewhere. So scattered pixels that the
    sparsity step kept in the background do not count as sites.
    """
    counts = A[:, markers] * S[markers].max(axis=1)
    sites = np.zeros(shape, dtype=bool)
    for column in counts.T:
        peak = column.max(initial=0.0)
        if peak <= 0:
            continue
        above = (column >= site_fraction * peak).reshape(shape)
        labels, _ = ndimage.label(above)
        cores = np.unique(labels[(column >= CORE_FRACTION * peak).reshape(shape)])
        sites |= np.isin(labels, cores[cores > 0])
    return ndimage.binary_dilation(sites)


def _quadratic_design(y_mm: np.ndarray, x_mm: np.ndarray, centre: tuple[float, float], scale_mm: float) -> np.ndarray:
    u = (y_mm - centre[0]) / scale_mm
    v = (x_mm - centre[1]) / scale_mm
    return np.column_stack([np.ones_like(u), u, v, u * u, u * v, v * v])


@dataclass
class _Interpolation:
    """The backgrounds of the interpolated site pixels, and the regions left out."""

    background: np.ndarray  # (interpolated pixels, wavelengths)
    interpolated: np.ndarray  # (rows * points,) bool
    n_regions: int = 0
    skipped: list[int] = field(default_factory=list)  # pixel counts, too few ring pixels
    faint: list[dict] = field(default_factory=list)  # pixel counts and contrast, below MIN_CONTRAST


def interpolate_background(
    M: np.ndarray,
    sites: np.ndarray,
    y_mm: np.ndarray,
    x_mm: np.ndarray,
    usable: np.ndarray,
    ring_mm: float,
    marker_light: np.ndarray | None = None,
) -> _Interpolation:
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
    marker_light : ndarray of shape (rows * points,), optional
        The markers' fitted light per pixel, summed over wavelength. With it, regions whose
        marker light is below ``MIN_CONTRAST`` times their interpolated background are left out.

    Returns
    -------
    _Interpolation
    """
    shape = sites.shape
    labels, n_regions = ndimage.label(sites)
    pitch_mm = (_median_step(y_mm), _median_step(x_mm))
    rows_mm, points_mm = np.meshgrid(y_mm, x_mm, indexing="ij")
    rows_mm, points_mm = rows_mm.ravel(), points_mm.ravel()
    usable_grid = usable.reshape(shape)

    result = _Interpolation(np.zeros_like(M, dtype=np.float64), np.zeros(M.shape[0], dtype=bool))
    for label in range(1, n_regions + 1):
        region = labels == label
        distance_mm = ndimage.distance_transform_edt(~region, sampling=pitch_mm)
        ring = (~sites & usable_grid & (distance_mm <= ring_mm)).ravel()
        if np.count_nonzero(ring) < MIN_RING_PIXELS:
            result.skipped.append(int(region.sum()))
            continue

        inside = region.ravel()
        centre = (float(rows_mm[inside].mean()), float(points_mm[inside].mean()))
        scale_mm = max(float(np.ptp(rows_mm[ring])), float(np.ptp(points_mm[ring])), 1e-9)
        design = _quadratic_design(rows_mm[ring], points_mm[ring], centre, scale_mm)
        coefficients, *_ = np.linalg.lstsq(design, np.asarray(M[ring], dtype=np.float64), rcond=None)
        background = _quadratic_design(rows_mm[inside], points_mm[inside], centre, scale_mm) @ coefficients

        if marker_light is not None:
            contrast = float(marker_light[inside].sum() / max(background.sum(), 1e-12))
            if contrast < MIN_CONTRAST:
                result.faint.append({"n_pixels": int(region.sum()), "contrast": contrast})
                continue
        result.background[inside] = background
        result.interpolated |= inside
        result.n_regions += 1

    if result.skipped:
        log.warning(
            "site background: %d of %d marker site regions (%s pixels) have fewer than %d usable pixels within "
            "%g mm around them and keep the fitted autofluorescence",
            len(result.skipped), n_regions, result.skipped, MIN_RING_PIXELS, ring_mm,
        )  # fmt: skip
    if result.faint:
        log.info(
            "site background: %d marker site regions are fainter than %g times their background and keep the "
            "fitted autofluorescence: %s",
            len(result.faint), MIN_CONTRAST, result.faint,
        )  # fmt: skip
    result.background = result.background[result.interpolated]
    return result


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
    marker_light = A[:, markers] @ S[markers].sum(axis=1)
    interpolation = interpolate_background(M, sites, y_mm, x_mm, usable, ring_mm, marker_light)
    background, interpolated = interpolation.background, interpolation.interpolated
    result = SiteRefinement(
        A,
        S,
        n_regions=interpolation.n_regions,
        n_site_pixels=int(interpolated.sum()),
        skipped_regions=interpolation.skipped,
        faint_regions=interpolation.faint,
    )
    if not interpolated.any():
        return result

    remainder = np.asarray(M[interpolated], dtype=np.float64) - background
    valid = np.ones_like(remainder, dtype=bool) if saturated is None else ~saturated[interpolated]
    marker_weights = A[interpolated][:, markers]
    light_share = marker_weights.sum(axis=0) / np.maximum(A[:, markers].sum(axis=0), 1e-300)
    keep_spectrum = [fixed[p] or share < MIN_LIGHT_SHARE for p, share in zip(markers, light_share)]
    result.spectra[markers] = _marker_spectra(remainder, valid, marker_weights, S[markers], keep_spectrum)

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
    """Fit the marker spectra not ``fixed`` to the background-free site pixels, wavelength by wavelength, with the weights held."""
    spectra = spectra.copy()
    free = [q for q in range(spectra.shape[0]) if not fixed[q]]
    kept = [q for q in range(spectra.shape[0]) if fixed[q]]
    if not free:
        return spectra
    target = remainder - weights[:, kept] @ spectra[kept] if kept else remainder
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
