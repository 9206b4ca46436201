"""The scan store: one Zarr v3 group per scan, written line by line and read back for unmixing.

Layout (the store contract)::

    raw          (y, x, wavelength)  detector counts, one chunk per line
    wavelength   (wavelength,)       nm, from the spectrograph calibration
    x            (x,)                mm along the slit, or the point index when the pitch is unknown
    y            (y,)                mm, the stage position read back at each line (NaN until acquired)
    line_done    (y,)                bool, set only after the line's data and metadata are written
    line_time    (y,)                s since the epoch, when the line's frame was read
    laser_power  (y,)                mW, the laser's power reading at each line
    dark         (x, wavelength)     mean dark frame, laser off
    dark_frames  (dark_frame, x, wavelength)  the dark frames as read, in counts
    truth/       simulated scans only: abundance (y, x, component), spectra (component, wavelength)
    unmixing/    written by fluoscan.unmixing.unmix_store

Group attributes: ``fluoscan_version``, ``status`` (a :class:`ScanStatus` value), ``started``,
``finished`` (ISO 8601, UTC), ``end_reason``, ``config`` (the full configuration) and ``devices``
(identity strings).

The ``truth/`` and ``unmixing/`` groups carry their own copies of the ``y``, ``x``, ``wavelength``
coordinates and a ``component`` coordinate of names (:meth:`ScanStore.write_group_coordinates`), so
that ``xarray.open_zarr(path, group="unmixing", consolidated=False)`` labels every axis.

Consolidated metadata: a scan that ends (complete or aborted) consolidates the store's metadata into
the root ``zarr.json``, so that readers listing the hierarchy need one request. Opening a store for
writing (``mode="r+"``) removes it, because any array or group written afterwards would be missing
from it; :meth:`ScanStore.consolidate` (or leaving a ``with ScanStore.open(..., "r+")`` block)
writes it again. ``ScanStore.open`` itself never reads it.

zarr-python 3 writes every chunk and metadata file through a temporary file and a rename, so a
process killed mid-write leaves the previous version of that file, never a torn one.
"""

from __future__ import annotations

import datetime as dt
import logging
import shutil
import warnings
from collections.abc import Sequence
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import zarr

import fluoscan

log = logging.getLogger(__name__)

# Per-line metadata arrays are chunked in blocks of lines, so that one line rewrites a small chunk.
_LINE_META_CHUNK = 256


class StoreError(RuntimeError):
    """A store is missing, already exists, or does not follow the store contract."""


# The group of a store that holds the reference acquisition (the animal before the markers).
REFERENCE = "reference"
MAIN = "scan"


def store_parts(path: str | Path) -> set[str]:
    """Return which acquisitions a path holds: "scan" (the main scan) and/or "reference"; empty if none."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return set()
    try:
        root = zarr.open_group(path, mode="r", zarr_format=3, use_consolidated=False)
    except (FileNotFoundError, ValueError, KeyError):
        return set()
    parts = {MAIN} if "raw" in root else set()
    if REFERENCE in root and "raw" in root[REFERENCE]:
        parts.add(REFERENCE)
    return parts


def _create_scan_arrays(
    group: zarr.Group, n_lines: int, wavelengths_nm: np.ndarray, x: np.ndarray, x_units: str, dtype: np.dtype | str
) -> None:
    n_points, n_wavelengths = len(x), len(wavelengths_nm)
    raw = group.create_array(
        "raw",
        shape=(n_lines, n_points, n_wavelengths),
        chunks=(1, n_points, n_wavelengths),
        dtype=dtype,
        fill_value=0,
        dimension_names=["y", "x", "wavelength"],
    )
    raw.attrs.update({"units": "counts", "long_name": "detector counts"})
    _coordinate(group, "wavelength", wavelengths_nm, {"units": "nm", "long_name": "wavelength"})
    _coordinate(group, "x", x, {"units": x_units, "long_name": "position along the slit"})
    line_arrays = {
        "y": (np.float64, np.nan, {"units": "mm", "long_name": "stage position read back"}),
        "line_done": (np.bool_, False, {"long_name": "line written"}),
        "line_time": (np.float64, np.nan, {"units": "s", "long_name": "time of the frame, seconds since the epoch"}),
        "laser_power": (np.float64, np.nan, {"units": "mW", "long_name": "laser power read back"}),
    }
    for name, (line_dtype, fill, line_attrs) in line_arrays.items():
        array = group.create_array(
            name,
            shape=(n_lines,),
            chunks=(min(n_lines, _LINE_META_CHUNK),),
            dtype=line_dtype,
            fill_value=fill,
            dimension_names=["y"],
        )
        array.attrs.update(line_attrs)


class ScanStatus(str, Enum):
    ACQUIRING = "acquiring"
    COMPLETE = "complete"
    ABORTED = "aborted"


def utc_now() -> str:
    """Return the current time as ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def _coordinate(group: zarr.Group, name: str, values: np.ndarray, attrs: dict[str, Any], overwrite: bool = False) -> None:
    array = group.create_array(
        name,
        shape=values.shape,
        dtype=values.dtype,
        chunks=values.shape,
        dimension_names=[name],
        fill_value=0,
        overwrite=overwrite,
    )
    array[...] = values
    array.attrs.update(attrs)


def _component_coordinate(group: zarr.Group, names: list[str]) -> None:
    # zarr 3 stores str arrays with its variable-length "string" data type, which xarray (checked
    # with 2026.9) reads as a coordinate. Readers that cannot read it find the "components" attribute.
    values = np.array([str(name) for name in names], dtype=str)
    array = group.create_array(
        "component", shape=values.shape, dtype=str, chunks=values.shape, dimension_names=["component"], overwrite=True
    )
    array[...] = values
    array.attrs.update({"long_name": "component name"})


class ScanStore:
    """A scan store opened for reading, for writing a new scan, or for resuming one.

    Use :meth:`create` for a new scan and :meth:`open` for an existing one.
    """

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self.group = group
        # Opening an array reads its metadata from disk; the line writer reuses these handles.
        self._arrays: dict[str, zarr.Array] = {}
        # The writer's copy of line_done. A store has one writer at a time, so it cannot go stale.
        self._done: np.ndarray | None = None

    def _array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            self._arrays[name] = self.group[name]
        return self._arrays[name]

    # ------------------------------------------------------------------ creation and opening

    @classmethod
    def create(
        cls,
        path: str | Path,
        *,
        n_lines: int,
        wavelengths_nm: np.ndarray,
        x: np.ndarray,
        x_units: str,
        dtype: np.dtype | str = np.uint16,
        attrs: dict[str, Any] | None = None,
        overwrite: bool = False,
        part: str | None = None,
    ) -> ScanStore:
        """Create an empty scan store with status "acquiring".

        ``part="reference"`` creates the reference acquisition (the animal without markers) as the
        group ``reference/`` of the store at ``path``, next to the main scan, which may already be
        there or come later. The main scan (``part=None``) may likewise be added to a store that
        holds only a reference acquisition.

        Raises
        ------
        StoreError
            If the scan (or the reference acquisition) exists and ``overwrite`` is False.
        """
        path = Path(path)
        if part not in (None, REFERENCE):
            raise ValueError(f"part must be None or {REFERENCE!r}, got {part!r}")
        present = store_parts(path)
        what = "a reference acquisition" if part == REFERENCE else "a scan"
        if (part or MAIN) in present:
            if not overwrite:
                held = "already holds a reference acquisition" if part == REFERENCE else "already exists"
                raise StoreError(f"output store {path} {held}; pass --overwrite to replace it or --resume to continue it")
            if part == REFERENCE:
                log.warning("replacing the reference acquisition of %s", path)
                del zarr.open_group(path, mode="r+", zarr_format=3, use_consolidated=False)[REFERENCE]
            else:
                log.warning("replacing existing store %s%s", path, " and its reference acquisition" if REFERENCE in present else "")
                shutil.rmtree(path)
        elif path.exists() and not present and (path.is_file() or any(path.iterdir())):
            raise StoreError(f"output path {path} exists and is not a fluoscan store; choose another --output")

        root = zarr.open_group(path, mode="a", zarr_format=3, use_consolidated=False)
        group = root if part is None else root.create_group(part)
        _create_scan_arrays(group, n_lines, np.asarray(wavelengths_nm, dtype=np.float64), np.asarray(x, dtype=np.float64), x_units, dtype)
        group.attrs.update(
            {
                "fluoscan_version": fluoscan.__version__,
                "status": ScanStatus.ACQUIRING.value,
                "started": utc_now(),
                "finished": None,
                "end_reason": None,
                **(attrs or {}),
            }
        )
        log.info(
            "created %s in %s: %d lines x %d points x %d wavelengths", what, path, n_lines, len(x), len(wavelengths_nm)
        )
        return cls(path, group)

    @classmethod
    def open(cls, path: str | Path, mode: str = "r", part: str | None = None) -> ScanStore:
        """Open an existing store, read-only (``mode="r"``) or for writing (``mode="r+"``).

        ``part="reference"`` opens the store's reference acquisition instead of its main scan.
        """
        path = Path(path)
        if not path.exists():
            raise StoreError(f"store not found: {path}")
        try:
            # Listing the hierarchy, instead of reading consolidated metadata, finds groups that a
            # writer added after the last consolidation.
            root = zarr.open_group(path, mode=mode, zarr_format=3, use_consolidated=False)
        except (FileNotFoundError, ValueError, KeyError) as exc:
            raise StoreError(f"{path} is not a readable Zarr v3 store: {exc}") from None
        if part is not None and part not in root:
            raise StoreError(f"{path} has no {part} acquisition")
        group = root if part is None else root[part]
        for name in ("raw", "wavelength", "line_done"):
            if name not in group:
                if part is None and REFERENCE in root:
                    raise StoreError(f"{path} holds only a reference acquisition so far; scan into it to add the main scan")
                raise StoreError(f"{path} is not a fluoscan scan store: it has no {name!r} array")
        store = cls(path, group)
        if mode != "r":
            store._drop_consolidated_metadata()
        return store

    def __enter__(self) -> ScanStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        if not self.group.read_only:
            self.consolidate()

    # ------------------------------------------------------------------ consolidated metadata

    def consolidate(self) -> None:
        """Write the metadata of every array and group into the root ``zarr.json``.

        Call it after adding arrays or groups to a finished store (``unmixing/``, say), so that
        readers using consolidated metadata (``xarray.open_zarr`` without ``consolidated=False``,
        ``zarr.open_group``) see them.
        """
        with warnings.catch_warnings():
            # zarr 3.1 warns that consolidated metadata is not yet part of the Zarr v3 specification.
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            zarr.consolidate_metadata(self.path, zarr_format=3)
        log.debug("consolidated the metadata of %s", self.path)

    def _drop_consolidated_metadata(self) -> None:
        # Rewriting the root's attributes through a group opened without consolidated metadata saves
        # a root zarr.json without it. Readers then list the hierarchy until the next consolidate().
        probe = zarr.open_group(self.path, mode="r", zarr_format=3)
        if probe.metadata.consolidated_metadata is not None:
            root = zarr.open_group(self.path, mode="r+", zarr_format=3, use_consolidated=False)
            root.attrs.put(dict(root.attrs))
            log.debug("removed the consolidated metadata of %s, which writes would make stale", self.path)

    # ------------------------------------------------------------------ properties

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def raw(self) -> zarr.Array:
        return self.group["raw"]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.raw.shape)

    @property
    def status(self) -> ScanStatus:
        return ScanStatus(self.group.attrs["status"])

    def wavelengths_nm(self) -> np.ndarray:
        return np.asarray(self.group["wavelength"][:])

    def x(self) -> np.ndarray:
        return np.asarray(self.group["x"][:])

    def y_mm(self) -> np.ndarray:
        return np.asarray(self.group["y"][:])

    def line_done(self) -> np.ndarray:
        return np.asarray(self.group["line_done"][:], dtype=bool)

    def first_missing_line(self) -> int | None:
        """Return the index of the first line not done, or None when every line is done."""
        missing = np.flatnonzero(~self.line_done())
        return int(missing[0]) if missing.size else None

    def dark(self) -> np.ndarray | None:
        """Return the mean dark frame (x, wavelength), or None if the scan recorded none."""
        return np.asarray(self.group["dark"][:]) if "dark" in self.group else None

    # ------------------------------------------------------------------ writing

    def write_dark(self, frames: np.ndarray) -> None:
        """Store the dark frames (frame, x, wavelength) as taken and their mean as ``dark`` (x, wavelength).

        Keeping every frame lets a replay reproduce the mean exactly.
        """
        frames = np.asarray(frames)
        if frames.ndim != 3 or frames.shape[1:] != self.raw.shape[1:]:
            raise StoreError(f"dark frames have shape {frames.shape}, the store expects (n, {self.raw.shape[1]}, {self.raw.shape[2]})")
        stack = self.group.create_array(
            "dark_frames",
            shape=frames.shape,
            dtype=frames.dtype,
            chunks=(1, *frames.shape[1:]),
            dimension_names=["dark_frame", "x", "wavelength"],
            overwrite=True,
        )
        stack[...] = frames
        mean = frames.mean(axis=0, dtype=np.float64).astype(np.float32)
        array = self.group.create_array(
            "dark", shape=mean.shape, dtype=np.float32, chunks=mean.shape, dimension_names=["x", "wavelength"], overwrite=True
        )
        array[...] = mean
        array.attrs.update({"units": "counts", "n_frames": int(frames.shape[0]), "long_name": "mean dark frame, laser off"})

    def dark_frames(self) -> np.ndarray | None:
        """Return the individual dark frames (frame, x, wavelength), or None if the scan recorded none."""
        return np.asarray(self.group["dark_frames"][:]) if "dark_frames" in self.group else None

    def write_line(self, index: int, frame: np.ndarray, *, y_mm: float, time_s: float, laser_power_mw: float) -> None:
        """Write one line's frame and metadata, then mark it done (see :meth:`write_lines`)."""
        self.write_lines([index], frame[None], y_mm=[y_mm], time_s=[time_s], laser_power_mw=[laser_power_mw])

    def write_lines(
        self,
        indices: Sequence[int],
        frames: np.ndarray,
        *,
        y_mm: Sequence[float],
        time_s: Sequence[float],
        laser_power_mw: Sequence[float],
    ) -> None:
        """Write several lines' frames, then their metadata, then mark them done.

        ``line_done`` is set last, so that a line marked done always has its data on disk. Writing
        consecutive lines together costs one metadata write per array instead of one per line.

        Raises
        ------
        StoreError
            If a line is already done (an acquired line is never overwritten), or a frame has the
            wrong shape; nothing of the batch is written then.
        """
        indices = np.asarray(indices, dtype=np.int64)
        if self._done is None:
            self._done = self.line_done()
        already = indices[self._done[indices]]
        if already.size:
            raise StoreError(f"line {int(already[0])} of {self.path} is already written; refusing to overwrite it")
        raw = self._array("raw")
        expected = raw.shape[1:]
        for index, frame in zip(indices, frames):
            if frame.shape != expected:
                raise StoreError(f"frame for line {index} has shape {frame.shape}, the store expects {expected}")

        for index, frame in zip(indices, frames):
            raw[int(index)] = frame
        contiguous = bool(np.all(np.diff(indices) == 1))
        where = slice(int(indices[0]), int(indices[-1]) + 1) if contiguous else None
        for name, values in (("y", y_mm), ("line_time", time_s), ("laser_power", laser_power_mw), ("line_done", None)):
            array = self._array(name)
            values = np.ones(len(indices), dtype=bool) if values is None else np.asarray(values, dtype=np.float64)
            if where is not None:
                array[where] = values
            else:
                for index, value in zip(indices, values):
                    array[int(index)] = value
        self._done[indices] = True

    def set_status(self, status: ScanStatus, end_reason: str | None = None) -> None:
        """Record the scan's status.

        A final status also records the end time and the reason, refreshes the coordinates copied
        into ``truth/`` and ``unmixing/``, and consolidates the metadata.
        """
        update: dict[str, Any] = {"status": status.value}
        if status is not ScanStatus.ACQUIRING:
            update["finished"] = utc_now()
            update["end_reason"] = end_reason
        self.group.attrs.update(update)
        if status is not ScanStatus.ACQUIRING:
            # The truth group was written before the first line, when y was still NaN.
            for name in ("truth", "unmixing"):
                if name in self.group:
                    self.write_group_coordinates(name)
            self.consolidate()

    def update_attrs(self, **attrs: Any) -> None:
        self.group.attrs.update(attrs)

    def write_truth(self, abundance: np.ndarray, spectra: np.ndarray, components: list[str]) -> None:
        """Store a simulated scan's ground truth: abundance (y, x, component) and spectra (component, wavelength)."""
        truth = self.group.require_group("truth")
        truth.attrs.update({"components": list(components)})
        for name, values, dims in (
            ("abundance", abundance, ["y", "x", "component"]),
            ("spectra", spectra, ["component", "wavelength"]),
        ):
            array = truth.create_array(
                name, shape=values.shape, dtype=np.float32, chunks=values.shape, dimension_names=dims, overwrite=True
            )
            array[...] = values.astype(np.float32)
        self.write_group_coordinates("truth", components)

    def write_group_coordinates(self, group_name: str, components: list[str] | None = None) -> None:
        """Copy the ``y``, ``x`` and ``wavelength`` coordinates into a subgroup, with component names.

        xarray looks for coordinate variables only inside the group it opens, so ``truth/`` and
        ``unmixing/`` each need their own copy. ``y`` is copied as it is when called: write the
        coordinates after the scan, when every line's position has been read back.

        Parameters
        ----------
        group_name : str
            The subgroup, e.g. "truth" or "unmixing"; it is created if missing.
        components : list of str, optional
            Component names, stored as the ``component`` coordinate (a zarr string array) and as
            the group attribute ``components``.
        """
        subgroup = self.group.require_group(group_name)
        for name in ("y", "x", "wavelength"):
            source = self.group[name]
            _coordinate(subgroup, name, np.asarray(source[:]), dict(source.attrs), overwrite=True)
        if components is not None:
            _component_coordinate(subgroup, list(components))
            subgroup.attrs.update({"components": [str(name) for name in components]})

    # ------------------------------------------------------------------ reading

    def read_cube(self, subtract_dark: bool = True, dtype: np.dtype | type = np.float32) -> np.ndarray:
        """Read the whole ``raw`` cube (y, x, wavelength), minus the dark frame when there is one."""
        cube = np.asarray(self.raw[:], dtype=dtype)
        dark = self.dark() if subtract_dark else None
        if dark is not None:
            cube -= dark.astype(dtype)[None, :, :]
        return cube
