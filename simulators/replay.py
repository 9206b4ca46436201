"""The replay spectrometer: plays back the frames of a recorded store, so that ``replay`` runs the real scan.

With the laser off it returns the store's dark frames in the order they were taken, or zeros when the
store has none. With the laser on it returns the frame of the line whose recorded ``y`` is nearest to
the stage position read back. Frames keep the store's ``raw`` dtype (uint16 from a scan, possibly
float32 from an imported cube), so a replayed scan reproduces ``raw`` bit for bit.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np

from fluoscan.acquisition.store import ScanStore, StoreError
from fluoscan.drivers import DeviceError, DeviceUnavailable

log = logging.getLogger(__name__)

DEVICE = "replay spectrometer"


class ReplaySpectrometer:
    """A Spectrometer that plays back a recorded store.

    Parameters
    ----------
    store_path : path
        The store to play back.
    laser, stage : optional
        The devices whose state selects the frame: the laser's emission and the stage's position.
    tolerance_mm : float, optional
        Largest distance between the stage position and a recorded line's ``y``. The default is a
        quarter of the smallest spacing between recorded lines, or 0.001 mm for a single line.

    Raises
    ------
    DeviceUnavailable
        If the store cannot be opened.
    """

    def __init__(self, store_path: str | Path, *, laser: Any = None, stage: Any = None, tolerance_mm: float | None = None) -> None:
        try:
            self._store = ScanStore.open(store_path)
        except StoreError as exc:
            raise DeviceUnavailable(f"{DEVICE}: cannot open replay_store {store_path}: {exc}") from exc
        self._path = Path(store_path)
        self._laser = laser
        self._stage = stage
        self._raw = self._store.raw
        self._dtype = np.dtype(self._raw.dtype)
        self._wavelengths_nm = self._store.wavelengths_nm()

        y_mm = self._store.y_mm()
        recorded = np.flatnonzero(self._store.line_done() & np.isfinite(y_mm))
        self._lines = recorded
        self._line_y_mm = y_mm[recorded]
        if tolerance_mm is None:
            spacing = np.diff(np.sort(self._line_y_mm))
            spacing = spacing[spacing > 0]
            tolerance_mm = float(spacing.min()) / 4 if spacing.size else 1e-3
        self._tolerance_mm = tolerance_mm

        self._dark_frames = self._store.dark_frames()
        self._dark_index = 0
        self._exposure_s = float("nan")
        self._closed = False
        config = self._store.attrs.get("config") or {}
        self._temperature_c = (config.get("spectrometer") or {}).get("temperature_c")
        log.info(
            "%s: %s, %d recorded lines, %d dark frames, %s frames",
            DEVICE,
            self._path,
            recorded.size,
            0 if self._dark_frames is None else len(self._dark_frames),
            self._dtype,
        )

    def identity(self) -> str:
        recorded_with = (self._store.attrs.get("devices") or {}).get("spectrometer", "unknown devices")
        return f"fluoscan replay of {self._path.name} (recorded with {recorded_with})"

    def set_exposure_s(self, exposure_s: float) -> float:
        self._exposure_s = float(exposure_s)
        return self._exposure_s

    def wavelengths_nm(self) -> np.ndarray:
        return self._wavelengths_nm.copy()

    def frame_shape(self) -> tuple[int, int]:
        _, n_points, n_wavelengths = self._raw.shape
        return n_points, n_wavelengths

    def frame_dtype(self) -> np.dtype:
        """Return the recorded store's ``raw`` dtype (float32 for an imported cube of reflectances, say)."""
        return self._dtype

    def temperature_c(self) -> float:
        """Return the recorded cooler setpoint, or NaN when the store does not have it."""
        return float(self._temperature_c) if self._temperature_c is not None else math.nan

    def acquire(self) -> np.ndarray:
        """Return the next dark frame (laser off) or the recorded frame at the stage position (laser on).

        Raises
        ------
        DeviceError
            If no recorded line lies within the tolerance of the stage position.
        """
        if self._closed:
            raise DeviceError(f"{DEVICE}: the spectrometer is closed; open a new one")
        if self._laser is None or not self._laser.emission():
            return self._next_dark_frame()
        if self._stage is None:
            raise DeviceError(f"{DEVICE}: no stage to read the position from, so no recorded line can be chosen")
        y_mm = float(self._stage.position_mm())
        if self._lines.size == 0:
            raise DeviceError(f"{DEVICE}: {self._path} has no recorded lines to play back")
        nearest = int(np.argmin(np.abs(self._line_y_mm - y_mm)))
        distance = abs(self._line_y_mm[nearest] - y_mm)
        if distance > self._tolerance_mm:
            raise DeviceError(
                f"{DEVICE}: no recorded line at y = {y_mm:.4f} mm (nearest {self._line_y_mm[nearest]:.4f} mm, tolerance "
                f"{self._tolerance_mm:.4f} mm; recorded {self._line_y_mm.min():.3f}..{self._line_y_mm.max():.3f} mm); "
                "replay with the store's own raster"
            )
        return np.asarray(self._raw[int(self._lines[nearest])], dtype=self._dtype)

    def _next_dark_frame(self) -> np.ndarray:
        if self._dark_frames is None or len(self._dark_frames) == 0:
            return np.zeros(self.frame_shape(), dtype=self._dtype)
        index = self._dark_index % len(self._dark_frames)
        if self._dark_index == len(self._dark_frames):
            log.warning("%s: more dark frames requested than the %d recorded; starting again from the first", DEVICE, len(self._dark_frames))
        self._dark_index += 1
        return np.asarray(self._dark_frames[index], dtype=self._dtype)

    def close(self) -> None:
        self._closed = True

    def __enter__(self) -> ReplaySpectrometer:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def open_replay_spectrometer(context: Any) -> ReplaySpectrometer:
    """Open the replay spectrometer (entry point ``fluoscan.spectrometers:replay``) on ``spectrometer.replay_store``."""
    store_path = context.config.spectrometer.replay_store
    if store_path is None:
        raise DeviceUnavailable(f'{DEVICE}: spectrometer.replay_store is not set; give the path of the store to play back')
    return ReplaySpectrometer(store_path, laser=context.laser, stage=context.stage)
