"""Reference emission spectra: the project's parametric models and loaders for measured spectra.

The parametric models let fluoscan run anywhere without external data. Each is a sum of
asymmetric Gaussian bands in wavelength, normalised to a peak of 1 on the grid it is evaluated on:

- ``af750``: Alexa Fluor 750, fitted by eye to a measured emission spectrum (Life Technologies
  data set): peak at 777 nm, a steeper blue edge than red edge, a weak red shoulder near 840 nm.
- ``icg_lnp``: indocyanine green in lipid nanoparticles. No measured spectrum was available; ICG in
  plasma or lipid carriers is reported to peak near 820–830 nm with a long red tail, which is what
  the model draws.
- ``autofluorescence``: near-infrared autofluorescence of skin and of chlorophyll in rodent food,
  broad, strongest near 700 nm and decaying towards 900 nm. Also a model, not a measurement.

NOTE: the icg_lnp and autofluorescence shapes are models built from published peak positions and
trends, not measurements; replace them with measured spectra of your own preparation when you have them.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

# (centre_nm, blue-side sigma_nm, red-side sigma_nm, relative height) per band.
_BANDS: dict[str, Sequence[tuple[float, float, float, float]]] = {
    "af750": ((777.0, 19.0, 22.0, 1.0), (838.0, 12.0, 25.0, 0.10)),
    "icg_lnp": ((826.0, 21.0, 38.0, 1.0), (880.0, 20.0, 45.0, 0.22)),
    "autofluorescence": ((705.0, 50.0, 100.0, 1.0), (780.0, 30.0, 60.0, 0.08)),
}

LIBRARY_NAMES: tuple[str, ...] = tuple(_BANDS)


def _asymmetric_gaussian(wavelengths_nm: np.ndarray, centre: float, sigma_blue: float, sigma_red: float) -> np.ndarray:
    sigma = np.where(wavelengths_nm < centre, sigma_blue, sigma_red)
    return np.exp(-0.5 * ((wavelengths_nm - centre) / sigma) ** 2)


def library_spectrum(name: str, wavelengths_nm: np.ndarray) -> np.ndarray:
    """Evaluate a built-in parametric emission spectrum on a wavelength grid.

    Parameters
    ----------
    name : str
        One of :data:`LIBRARY_NAMES`.
    wavelengths_nm : ndarray of shape (n_wavelengths,)
        Wavelengths in nm.

    Returns
    -------
    ndarray of shape (n_wavelengths,), float64
        The spectrum, scaled to a maximum of 1 on this grid.
    """
    try:
        bands = _BANDS[name]
    except KeyError:
        raise ValueError(f"unknown library spectrum {name!r}; choose one of {', '.join(LIBRARY_NAMES)}") from None
    wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64)
    spectrum = np.zeros_like(wavelengths_nm)
    for centre, sigma_blue, sigma_red, height in bands:
        spectrum += height * _asymmetric_gaussian(wavelengths_nm, centre, sigma_blue, sigma_red)
    peak = spectrum.max(initial=0.0)
    if peak <= 0:
        raise ValueError(f"library spectrum {name!r} is zero on {wavelengths_nm.min():g}..{wavelengths_nm.max():g} nm")
    return spectrum / peak


def load_spectrum_file(path: str | Path, wavelengths_nm: np.ndarray) -> np.ndarray:
    """Read a measured spectrum and interpolate it onto a wavelength grid, scaled to a peak of 1.

    Accepted formats: ``.npy`` or ``.csv``/``.txt`` with two columns (wavelength in nm, value), and
    MATLAB ``.mat`` files with ``wave`` (nm) and ``emission`` variables. Values outside the file's
    wavelength range are 0.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".mat":
            from scipy.io import loadmat

            contents = loadmat(path)
            try:
                table = np.column_stack([np.ravel(contents["wave"]), np.ravel(contents["emission"])])
            except KeyError as exc:
                raise ValueError(f"{path} has no {exc.args[0]!r} variable; expected 'wave' (nm) and 'emission'") from None
        elif suffix == ".npy":
            table = np.load(path, allow_pickle=False)
        else:
            table = np.loadtxt(path, delimiter="," if suffix == ".csv" else None, ndmin=2)
    except OSError as exc:
        raise ValueError(f"cannot read spectrum file {path}: {exc}") from None
    table = np.asarray(table, dtype=np.float64)
    if table.ndim != 2 or table.shape[1] != 2 or table.shape[0] < 2:
        raise ValueError(f"spectrum file {path} must hold (wavelength_nm, value) rows, got an array of shape {table.shape}")
    if not np.all(np.isfinite(table)):
        raise ValueError(f"spectrum file {path} contains NaN or infinite values")
    order = np.argsort(table[:, 0])
    values = np.interp(wavelengths_nm, table[order, 0], table[order, 1], left=0.0, right=0.0)
    values = np.clip(values, 0.0, None)
    peak = values.max(initial=0.0)
    if peak <= 0:
        raise ValueError(
            f"spectrum in {path} is zero on {np.min(wavelengths_nm):g}..{np.max(wavelengths_nm):g} nm; "
            "check that its wavelengths are in nm and overlap the scan's"
        )
    return values / peak
