"""Initial spectra for the unmixing: from the library, a file, the data's mean or pixels picked from the data.

A component's ``spectrum`` setting (:class:`fluoscan.acquisition.config.ComponentConfig`) names its source:

- ``"library:NAME"``: a built-in parametric spectrum (:func:`fluoscan.unmixing.library.library_spectrum`);
- ``"mean"``: the mean spectrum of the data;
- ``"auto"``: a pixel spectrum picked from the data by the successive projection algorithm (SPA);
- ``"reference"``: the mean spectrum of a reference acquisition (the animal without markers);
- anything else: a path to a spectrum file (:func:`fluoscan.unmixing.library.load_spectrum_file`).

Multiplicative updates never change the sign pattern of a spectrum and keep two identical components
identical unless their constraints differ, so the initial spectra decide much of the result.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fluoscan.unmixing.library import library_spectrum, load_spectrum_file

log = logging.getLogger(__name__)

LIBRARY_PREFIX = "library:"
# Picked pixels are averaged with this many of their nearest neighbours in the reduced space.
_SPA_NEIGHBOURS = 8
# Rows per block of the Gram matrix MᵀM. Each block's product runs in float32 whatever M's dtype
# (twice as fast as float64, and the same picks for float32 and float64 data); the blocks are
# summed in float64. The Gram matrix only steers which pixels are picked.
_GRAM_BLOCK_ROWS = 4096


def mean_spectrum(M: np.ndarray) -> np.ndarray:
    """Return the mean spectrum of ``M`` (n_pixels, n_wavelengths), accumulated in float64."""
    return np.mean(M, axis=0, dtype=np.float64)


def _reduced_coordinates(M: np.ndarray, n_components: int) -> tuple[np.ndarray, np.ndarray]:
    """Return the usable pixels (non-zero sum) and their unit-sum coordinates on the leading singular directions."""
    totals = np.sum(M, axis=1, dtype=np.float64)
    usable = np.flatnonzero(totals > 0)
    if usable.size < n_components:
        raise ValueError(
            f"only {usable.size} pixels have a non-zero spectrum, fewer than the {n_components} components to pick"
        )
    # The right singular vectors of M are the eigenvectors of the small Gram matrix MᵀM.
    gram = np.zeros((M.shape[1], M.shape[1]))
    for start in range(0, M.shape[0], _GRAM_BLOCK_ROWS):
        block = np.asarray(M[start : start + _GRAM_BLOCK_ROWS], dtype=np.float32)
        gram += block.T @ block
    _, vectors = np.linalg.eigh(gram)
    leading = vectors[:, ::-1][:, :n_components]
    coordinates = (M[usable] @ leading.astype(M.dtype, copy=False)).astype(np.float64)
    coordinates /= totals[usable, None]
    return usable, coordinates


def successive_projection_picks(M: np.ndarray, n_components: int) -> np.ndarray:
    """Pick ``n_components`` pixels whose spectra span the data, by the successive projection algorithm.

    The data are first reduced to their ``n_components`` leading singular directions, which removes
    most of the noise that would otherwise steer the picks towards outlier pixels. Each pixel is then
    scaled to a unit sum, so that a mixture of pure spectra lies inside their convex hull. SPA
    repeatedly takes the pixel with the largest norm and projects every pixel onto the orthogonal
    complement of the picked one. For data that contain pure pixels it finds one per component.

    Parameters
    ----------
    M : ndarray of shape (n_pixels, n_wavelengths)
        Non-negative data.
    n_components : int
        Number of pixels to pick.

    Returns
    -------
    ndarray of shape (n_components,), int
        Indices of the picked pixels, in increasing order.
    """
    usable, coordinates = _reduced_coordinates(M, n_components)
    return usable[_project_and_pick(coordinates, n_components)]


def _project_and_pick(coordinates: np.ndarray, n_components: int) -> np.ndarray:
    residual = coordinates.copy()
    picks = np.empty(n_components, dtype=np.intp)
    for index in range(n_components):
        norms = np.einsum("ij,ij->i", residual, residual)
        picks[index] = int(np.argmax(norms))
        direction = residual[picks[index]] / np.sqrt(norms[picks[index]])
        residual -= np.outer(residual @ direction, direction)
    # Pixels of nearly equal norm can be picked in either order depending on rounding (float32 or
    # float64 data, say); sorting by pixel gives the same components in the same order.
    return np.sort(picks)


def endmember_spectra(M: np.ndarray, n_components: int) -> np.ndarray:
    """Estimate ``n_components`` spectra from the data's purest pixels.

    Each pixel picked by :func:`successive_projection_picks` is averaged with its
    ``_SPA_NEIGHBOURS`` nearest neighbours in the reduced space, which lowers the noise of a single
    pixel. Each spectrum is scaled to a peak of 1.

    Returns
    -------
    ndarray of shape (n_components, n_wavelengths), float64
    """
    usable, coordinates = _reduced_coordinates(M, n_components)
    picks = _project_and_pick(coordinates, n_components)
    n_neighbours = min(_SPA_NEIGHBOURS + 1, usable.size)

    spectra = np.empty((n_components, M.shape[1]))
    for index, pick in enumerate(picks):
        distances = np.sum((coordinates - coordinates[pick]) ** 2, axis=1)
        nearest = usable[np.argpartition(distances, n_neighbours - 1)[:n_neighbours]]
        block = np.asarray(M[nearest], dtype=np.float64)
        spectra[index] = np.mean(block / block.sum(axis=1, keepdims=True), axis=0)
    spectra /= spectra.max(axis=1, keepdims=True)
    log.debug("picked pixels %s as initial spectra", usable[picks].tolist())
    return spectra


def initial_spectrum(
    source: str,
    wavelengths_nm: np.ndarray,
    *,
    data_mean: np.ndarray | None = None,
    reference_mean: np.ndarray | None = None,
    base_dir: str | Path | None = None,
) -> np.ndarray:
    """Build one initial spectrum from a source other than ``"auto"``, scaled to a peak of 1.

    Parameters
    ----------
    source : str
        ``"library:NAME"``, ``"mean"``, ``"reference"`` or a file path.
    wavelengths_nm : ndarray of shape (n_wavelengths,)
        The data's wavelength axis in nm.
    data_mean : ndarray of shape (n_wavelengths,), optional
        The data's mean spectrum, needed for ``"mean"``.
    reference_mean : ndarray of shape (n_wavelengths,), optional
        The reference acquisition's mean spectrum, needed for ``"reference"``.
    base_dir : path, optional
        Folder that relative file paths are resolved against.

    Raises
    ------
    ValueError
        If the source is unknown, a needed spectrum is missing, or the spectrum is zero everywhere.
    """
    if source.startswith(LIBRARY_PREFIX):
        return library_spectrum(source.removeprefix(LIBRARY_PREFIX), wavelengths_nm)
    if source == "mean":
        return _scaled_to_peak(data_mean, "the data's mean spectrum")
    if source == "reference":
        if reference_mean is None:
            raise ValueError(
                'initial spectrum "reference" needs a reference acquisition (the animal without markers), '
                "and none was given; record one or choose another spectrum source"
            )
        return _scaled_to_peak(reference_mean, "the reference acquisition's mean spectrum")
    path = Path(source)
    if base_dir is not None and not path.is_absolute():
        path = Path(base_dir) / path
    if not path.exists():
        raise ValueError(
            f"initial spectrum {source!r} is not a library name, a keyword or an existing file; use "
            '"library:NAME", "mean", "auto", "reference" or the path of a .npy/.csv/.mat spectrum file'
        )
    return load_spectrum_file(path, wavelengths_nm)


def initial_spectra(
    sources: Sequence[str],
    M: np.ndarray,
    wavelengths_nm: np.ndarray,
    *,
    reference_mean: np.ndarray | None = None,
    base_dir: str | Path | None = None,
) -> np.ndarray:
    """Build the initial spectra of every component, one source per component.

    Components with source ``"auto"`` get the spectra of the data's purest pixels
    (:func:`endmember_spectra`). When several components request ``"auto"``, SPA picks as many
    pixels, which go to those components in the order picked.

    Returns
    -------
    ndarray of shape (n_components, n_wavelengths), float64
        Spectra scaled to a peak of 1.
    """
    wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64)
    if wavelengths_nm.shape != (M.shape[1],):
        raise ValueError(f"wavelength axis has shape {wavelengths_nm.shape}, the data have {M.shape[1]} wavelengths")
    data_mean = mean_spectrum(M) if "mean" in sources else None
    n_auto = sum(source == "auto" for source in sources)
    picked = iter(endmember_spectra(M, n_auto)) if n_auto else iter(())

    spectra = np.empty((len(sources), M.shape[1]))
    for index, source in enumerate(sources):
        if source == "auto":
            spectra[index] = next(picked)
        else:
            spectra[index] = initial_spectrum(
                source, wavelengths_nm, data_mean=data_mean, reference_mean=reference_mean, base_dir=base_dir
            )
    return spectra


def _scaled_to_peak(spectrum: np.ndarray | None, description: str) -> np.ndarray:
    if spectrum is None:
        raise ValueError(f"{description} is needed but missing")
    spectrum = np.clip(np.asarray(spectrum, dtype=np.float64), 0.0, None)
    peak = spectrum.max(initial=0.0)
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError(f"{description} is zero or not finite everywhere; it cannot start a non-negative fit")
    return spectrum / peak
