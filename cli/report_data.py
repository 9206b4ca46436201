"""The data that the report and the scan preview read from a scan store: map axes, raw averages, unmixing.

The sparsity sweep is read from ``unmixing/sweep/``: ``targets`` (target,), ``n_zeroed`` (target,
component), ``spectra_distance`` (target, component) and, optionally, ``abundance`` (target, y, x,
component).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zarr

from fluoscan.acquisition.store import ScanStore
from fluoscan.cli.figures import MapAxes

log = logging.getLogger(__name__)

# Lines read from the raw cube at once while averaging it: bounds memory for large scans.
_BLOCK_LINES = 32


def map_axes_of(store: ScanStore) -> MapAxes:
    """Return the map coordinates: x as stored, y read back, or planned where lines are missing.

    y falls back to the planned positions (``scan.y_start_mm`` + i ``scan.step_mm``) when some
    lines were not acquired or the readback is not monotonic, and to the line index without them.
    """
    x = store.x()
    x_units = str(store.group["x"].attrs.get("units", "point index"))
    y = store.y_mm()
    steps = np.diff(y)
    if np.all(np.isfinite(y)) and (len(y) < 2 or np.all(steps > 0) or np.all(steps < 0)):
        return MapAxes(x=x, y=y, x_units=x_units, y_units="mm")
    scan_config = (store.attrs.get("config") or {}).get("scan") or {}
    if "y_start_mm" in scan_config and "step_mm" in scan_config:
        planned = scan_config["y_start_mm"] + np.arange(len(y)) * scan_config["step_mm"]
        return MapAxes(x=x, y=planned, x_units=x_units, y_units="mm")
    return MapAxes(x=x, y=np.arange(len(y), dtype=float), x_units=x_units, y_units="line index")


@dataclass
class RawSummary:
    """Averages of the dark-subtracted raw cube over the lines acquired."""

    mean_image: np.ndarray  # (y, x) counts, NaN on lines not acquired
    mean_spectrum: np.ndarray  # (wavelength,) counts
    bright_spectrum: np.ndarray | None  # (wavelength,) counts, brightest 1 % of pixels
    n_lines_done: int


def _done_blocks(done: np.ndarray) -> list[slice]:
    return [
        slice(start, min(start + _BLOCK_LINES, len(done)))
        for start in range(0, len(done), _BLOCK_LINES)
        if done[start : start + _BLOCK_LINES].any()
    ]


def summarise_raw(store: ScanStore) -> RawSummary | None:
    """Average the raw cube block by block; return None when no line is acquired."""
    done = store.line_done()
    if not done.any():
        return None
    n_lines, n_points, n_wavelengths = store.shape
    dark = store.dark()
    mean_image = np.full((n_lines, n_points), np.nan)
    spectrum_sum = np.zeros(n_wavelengths)
    blocks = _done_blocks(done)

    def read_block(block: slice) -> np.ndarray:
        cube = np.asarray(store.raw[block], dtype=np.float64)
        if dark is not None:
            cube -= dark[None, :, :]
        cube[~done[block]] = np.nan
        return cube

    for block in blocks:
        cube = read_block(block)
        mean_image[block] = cube.mean(axis=2)
        spectrum_sum += np.nansum(cube, axis=(0, 1))
    n_pixels = int(done.sum()) * n_points

    # A second pass collects the spectra of the brightest pixels, once their threshold is known.
    threshold = np.nanpercentile(mean_image, 99)
    bright_sum, n_bright = np.zeros(n_wavelengths), 0
    for block in blocks:
        bright = mean_image[block] >= threshold
        if bright.any():
            bright_sum += read_block(block)[bright].sum(axis=0)
            n_bright += int(bright.sum())
    bright_spectrum = bright_sum / n_bright if n_bright else None
    return RawSummary(mean_image, spectrum_sum / n_pixels, bright_spectrum, int(done.sum()))


@dataclass
class Sweep:
    """A sparsity sweep: one unmixing per sparsity target."""

    targets: np.ndarray  # (target,)
    n_zeroed: np.ndarray  # (target, component)
    spectra_distance: np.ndarray  # (target, component)
    abundance: np.ndarray | None  # (target, y, x, component)


@dataclass
class Unmixing:
    """The arrays and attributes of a store's ``unmixing/`` group; each array may be absent."""

    names: list[str]
    attrs: dict[str, Any]
    abundance: np.ndarray | None = None
    abundance_units: str = "a.u."
    spectra: np.ndarray | None = None
    spectra_init: np.ndarray | None = None
    residual: np.ndarray | None = None
    residual_attrs: dict[str, Any] = field(default_factory=dict)
    loss: np.ndarray | None = None
    loss_attrs: dict[str, Any] = field(default_factory=dict)
    sweep: Sweep | None = None


def _array(group: zarr.Group, name: str) -> np.ndarray | None:
    return np.asarray(group[name][:]) if name in group else None


def component_names(group: zarr.Group, n_components: int) -> list[str]:
    """Return the component names: the ``components`` attribute, the ``component`` array, or numbers."""
    names = group.attrs.get("components")
    if names is None and "component" in group:
        names = [str(name) for name in np.asarray(group["component"][:])]
    if names is None or len(names) != n_components:
        if names is not None:
            log.warning("%s names %d components, its arrays have %d; numbering them", group.path, len(names), n_components)
        names = [f"component {index}" for index in range(n_components)]
    return [str(name) for name in names]


def read_unmixing(store: ScanStore) -> Unmixing | None:
    """Read ``unmixing/`` (and ``unmixing/sweep/``) into memory; None when the store has none."""
    if "unmixing" not in store.group:
        return None
    group = store.group["unmixing"]
    abundance = _array(group, "abundance")
    spectra = _array(group, "spectra")
    n_components = 0
    if abundance is not None:
        n_components = abundance.shape[-1]
    elif spectra is not None:
        n_components = spectra.shape[0]

    result = Unmixing(names=component_names(group, n_components), attrs=dict(group.attrs))
    result.abundance, result.spectra = abundance, spectra
    if abundance is not None:
        result.abundance_units = str(group["abundance"].attrs.get("units", "a.u."))
    result.spectra_init = _array(group, "spectra_init")
    result.residual = _array(group, "residual")
    if result.residual is not None:
        result.residual_attrs = dict(group["residual"].attrs)
    result.loss = _array(group, "loss")
    if result.loss is not None:
        result.loss_attrs = dict(group["loss"].attrs)

    if "sweep" in group:
        sweep = group["sweep"]
        if all(name in sweep for name in ("targets", "n_zeroed", "spectra_distance")):
            result.sweep = Sweep(
                targets=np.asarray(sweep["targets"][:], dtype=np.float64),
                n_zeroed=np.asarray(sweep["n_zeroed"][:]),
                spectra_distance=np.asarray(sweep["spectra_distance"][:], dtype=np.float64),
                abundance=_array(sweep, "abundance"),
            )
        else:
            log.warning("%s/unmixing/sweep lacks targets, n_zeroed or spectra_distance; no sweep figure", store.path)
    return result
