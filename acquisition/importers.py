"""Turn a spectral cube recorded elsewhere (MATLAB .mat or NumPy .npy) into a scan store.

The file's layout is described with axis names: ``y``, ``x`` and ``wavelength`` for a cube, or
``pixel`` and ``wavelength`` for a 2-D matrix whose pixels are unrolled from a (y, x) image of
``image_shape`` in C (row-major) or Fortran (column-major, MATLAB's) order. The resulting store is
"complete", every line is done, and it has no dark frame: import data that is already
dark-subtracted, or subtract it yourself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fluoscan.acquisition.config import parse_config
from fluoscan.acquisition.replay import raster_config
from fluoscan.acquisition.store import ScanStatus, ScanStore

log = logging.getLogger(__name__)

CUBE_AXES = ("y", "x", "wavelength")
MATRIX_AXES = ("pixel", "wavelength")


class ImportFileError(ValueError):
    """An import file cannot be read or does not match the layout it was described with."""


@dataclass(frozen=True)
class CubeLayout:
    """How the array in an import file maps onto (y, x, wavelength).

    Attributes
    ----------
    axes : tuple of str
        Axis names of the stored array, in order: a permutation of ("y", "x", "wavelength") or of
        ("pixel", "wavelength").
    image_shape : (int, int) or None
        (n_lines, n_points) of the image whose pixels a "pixel" axis unrolls.
    order : "C" or "F"
        Unrolling order of a "pixel" axis: "C" runs x fastest, "F" (MATLAB) runs y fastest.
    """

    axes: tuple[str, ...] = CUBE_AXES
    image_shape: tuple[int, int] | None = None
    order: str = "C"

    def __post_init__(self) -> None:
        if sorted(self.axes) not in (sorted(CUBE_AXES), sorted(MATRIX_AXES)):
            raise ImportFileError(
                f"layout axes {','.join(self.axes)} must name y, x and wavelength, or pixel and wavelength, once each"
            )
        if "pixel" in self.axes and self.image_shape is None:
            raise ImportFileError("a layout with a pixel axis needs the image shape (lines, points), e.g. --image-shape 95,95")
        if self.order not in ("C", "F"):
            raise ImportFileError(f"order must be C or F, got {self.order!r}")

    def to_cube(self, array: np.ndarray) -> np.ndarray:
        """Return the array rearranged as (y, x, wavelength)."""
        if array.ndim != len(self.axes):
            raise ImportFileError(f"the array has {array.ndim} dimensions {array.shape}, the layout names {len(self.axes)}: {','.join(self.axes)}")
        if "pixel" not in self.axes:
            return np.transpose(array, [self.axes.index(axis) for axis in CUBE_AXES])
        matrix = np.transpose(array, [self.axes.index(axis) for axis in MATRIX_AXES])
        n_lines, n_points = self.image_shape
        if matrix.shape[0] != n_lines * n_points:
            raise ImportFileError(
                f"the pixel axis has {matrix.shape[0]} pixels, image shape {n_lines}x{n_points} needs {n_lines * n_points}"
            )
        if self.order == "C":
            return matrix.reshape(n_lines, n_points, -1)
        # Fortran order: y runs fastest along the pixel axis.
        return matrix.reshape(n_points, n_lines, -1).transpose(1, 0, 2)


def _read_mat(path: Path) -> dict[str, np.ndarray]:
    from scipy.io import loadmat
    from scipy.io.matlab import MatReadError

    try:
        contents = loadmat(path)
    except NotImplementedError:
        raise ImportFileError(
            f"{path} is a MATLAB v7.3 (HDF5) file, which is not supported; save it with save(..., '-v7') or export .npy"
        ) from None
    except (MatReadError, ValueError, OSError) as exc:
        raise ImportFileError(f"cannot read {path} as a MATLAB file: {exc}") from None
    return {name: value for name, value in contents.items() if not name.startswith("__") and isinstance(value, np.ndarray)}


def read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read the named numeric arrays of a .mat or .npy file (a .npy file holds one array, named "data")."""
    path = Path(path)
    if not path.is_file():
        raise ImportFileError(f"import file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".mat":
        return _read_mat(path)
    if suffix == ".npy":
        try:
            return {"data": np.load(path, allow_pickle=False)}
        except ValueError as exc:
            if "pickle" in str(exc):
                raise ImportFileError(
                    f"{path} is not a plain numeric .npy array (it holds Python objects, or is not an .npy file at all); "
                    "fluoscan never loads pickled data: save the cube with numpy.save from a numeric array"
                ) from None
            raise ImportFileError(f"cannot read {path} as a NumPy .npy array: {exc}") from None
        except OSError as exc:
            raise ImportFileError(f"cannot read {path} as a NumPy .npy array: {exc}") from None
    raise ImportFileError(f"unsupported import file type {suffix!r} for {path}; use .mat (MATLAB v5/v7) or .npy")


def _pick(arrays: dict[str, np.ndarray], name: str | None, path: Path) -> np.ndarray:
    numeric = {key: value for key, value in arrays.items() if value.dtype.kind in "fiu"}
    if name is not None:
        if name not in arrays:
            raise ImportFileError(f"{path} has no variable {name!r}; it has: {', '.join(sorted(arrays)) or 'none'}")
        return arrays[name]
    if not numeric:
        raise ImportFileError(f"{path} has no numeric array to import")
    largest = max(numeric, key=lambda key: numeric[key].size)
    log.info("importing variable %r of %s (the largest numeric array)", largest, path)
    return numeric[largest]


def import_cube(
    path: str | Path,
    output: str | Path,
    *,
    variable: str | None = None,
    layout: CubeLayout | None = None,
    wavelengths_nm: np.ndarray | tuple[float, float] | None = None,
    wavelength_variable: str | None = None,
    step_mm: float = 1.0,
    point_pitch_mm: float | None = None,
    truth_spectra_variable: str | None = None,
    components: list[str] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the cube of an import file into a new, complete scan store.

    Parameters
    ----------
    path : path
        A .mat or .npy file.
    output : path
        The store to create.
    variable : str, optional
        The variable holding the cube; by default the largest numeric array.
    layout : CubeLayout, optional
        How the array's axes map onto (y, x, wavelength); by default the array is (y, x, wavelength).
    wavelengths_nm : array or (first, last), optional
        Wavelength of each band in nm, or the first and last of evenly spaced bands.
    wavelength_variable : str, optional
        A variable of the file holding the wavelengths in nm.
    step_mm, point_pitch_mm : float
        Line step and point pitch in mm; ``point_pitch_mm=None`` records x as a point index.
    truth_spectra_variable : str, optional
        A variable with reference spectra (component, wavelength), stored as ``truth/spectra``.
    components : list of str, optional
        Names of the components to unmix, each initialised from the data ("auto" spectra); stored in
        the store's configuration for ``fluoscan unmix`` and ``fluoscan replay``.
    """
    path, output = Path(path), Path(output)
    arrays = read_arrays(path)
    array = np.asarray(_pick(arrays, variable, path))
    if array.dtype.kind not in "fiu":
        raise ImportFileError(f"variable {variable!r} of {path} is {array.dtype}, not numeric")
    cube = (layout or CubeLayout()).to_cube(array)
    if not np.all(np.isfinite(cube)):
        raise ImportFileError(f"{path} contains {int(np.size(cube) - np.isfinite(cube).sum())} NaN or infinite values")
    n_lines, n_points, n_bands = cube.shape

    if wavelength_variable is not None:
        wavelengths = np.ravel(_pick(arrays, wavelength_variable, path)).astype(np.float64)
    elif wavelengths_nm is None:
        raise ImportFileError(f"the wavelengths of {path} are unknown: give --wavelengths FIRST,LAST (nm) or --wavelength-variable")
    elif len(wavelengths_nm) == 2 and n_bands != 2:
        wavelengths = np.linspace(float(wavelengths_nm[0]), float(wavelengths_nm[1]), n_bands)
    else:
        wavelengths = np.asarray(wavelengths_nm, dtype=np.float64)
    if wavelengths.shape != (n_bands,):
        raise ImportFileError(f"{len(wavelengths)} wavelengths given for a cube of {n_bands} bands")

    config = raster_config(
        n_lines=n_lines,
        y_mm=np.arange(n_lines) * step_mm,
        n_points=n_points,
        point_pitch_mm=point_pitch_mm,
        dark_frames=0,
        component_names=components,
    )
    config["scan"]["name"] = f"imported from {path.name}"
    dtype = cube.dtype if cube.dtype.kind in "iu" and cube.dtype.itemsize <= 2 else np.float32
    x = np.arange(n_points) * point_pitch_mm if point_pitch_mm is not None else np.arange(n_points, dtype=float)
    store = ScanStore.create(
        output,
        n_lines=n_lines,
        wavelengths_nm=wavelengths,
        x=x,
        x_units="mm" if point_pitch_mm is not None else "point index",
        dtype=dtype,
        attrs={
            "imported_from": path.name,
            "imported_variable": variable,
            "config": parse_config(config, "the import options").to_dict(),
            "devices": None,
        },
        overwrite=overwrite,
    )
    for index in range(n_lines):
        store.write_line(index, cube[index].astype(dtype), y_mm=index * step_mm, time_s=float("nan"), laser_power_mw=float("nan"))
    if truth_spectra_variable is not None:
        spectra = np.asarray(_pick(arrays, truth_spectra_variable, path), dtype=np.float64)
        if spectra.ndim != 2 or n_bands not in spectra.shape:
            raise ImportFileError(f"reference spectra {truth_spectra_variable!r} have shape {spectra.shape}, need (component, {n_bands})")
        if spectra.shape[1] != n_bands:
            spectra = spectra.T
        names = [f"reference_{i}" for i in range(spectra.shape[0])]
        truth = store.group.require_group("truth")
        truth.attrs.update({"components": names})
        array_out = truth.create_array("spectra", shape=spectra.shape, dtype=np.float32, dimension_names=["component", "wavelength"])
        array_out[...] = spectra.astype(np.float32)
    store.set_status(ScanStatus.COMPLETE, f"imported from {path.name}")
    log.info("imported %s: %d lines x %d points x %d bands into %s", path, n_lines, n_points, n_bands, output)
    return output
