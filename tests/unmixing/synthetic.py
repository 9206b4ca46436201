"""Synthetic unmixing problems with known weights and spectra."""

from __future__ import annotations

import numpy as np

from fluoscan.unmixing.library import library_spectrum

MOUSE_COMPONENTS = ("autofluorescence", "icg_lnp", "af750")


def random_product(n_pixels: int, n_wavelengths: int, n_components: int, seed: int = 0, dtype=np.float64):
    """Return (M, A, S) with M = A S exactly, A and S uniform in [0, 1)."""
    rng = np.random.default_rng(seed)
    A = rng.random((n_pixels, n_components))
    S = rng.random((n_components, n_wavelengths))
    return (A @ S).astype(dtype), A, S


def separable_product(n_pixels: int, n_wavelengths: int, n_components: int, seed: int = 0):
    """Return (M, A, S) where every component has pure pixels and a peaked spectrum, so the factorization is unique."""
    rng = np.random.default_rng(seed)
    A = rng.random((n_pixels, n_components)) ** 2
    A[:n_components] = np.eye(n_components)
    grid = np.linspace(0.0, 1.0, n_wavelengths)
    centres = (np.arange(n_components) + 0.5) / n_components
    S = np.exp(-0.5 * ((grid[None, :] - centres[:, None]) / 0.12) ** 2) + 0.01
    return A @ S, A, S


def mouse_scene(ny: int = 24, nx: int = 32, wavelengths_nm=None, seed: int = 0):
    """Return (A (ny, nx, 3), S (3, n_wavelengths), wavelengths_nm): autofluorescence everywhere, two marker tubes.

    Weights are in photon counts per peak-normalised spectrum.
    """
    rng = np.random.default_rng(seed)
    wavelengths_nm = np.linspace(700.0, 900.0, 48) if wavelengths_nm is None else np.asarray(wavelengths_nm)
    S = np.stack([library_spectrum(name, wavelengths_nm) for name in MOUSE_COMPONENTS])
    yy, xx = np.mgrid[0:ny, 0:nx]
    A = np.zeros((ny, nx, 3))
    A[..., 0] = 400.0 * np.exp(-(((yy - ny / 2) / ny) ** 2 + ((xx - nx / 2) / nx) ** 2)) + 40.0 * rng.random((ny, nx))
    A[ny // 4 : ny // 4 + 2, nx // 8 : -nx // 8, 1] = 600.0
    A[3 * ny // 4 : 3 * ny // 4 + 2, nx // 8 : -nx // 8, 2] = 500.0
    return A, S, wavelengths_nm
