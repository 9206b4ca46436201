"""Andor spectrometer: an SDK2 CCD camera (iDus, Newton, ...) on a Shamrock/Kymera spectrograph, through pylablib.

Readout. Each frame is (n_points, n_wavelengths). The camera runs in image read mode with on-chip
binning: ``vbin = track_height_px`` rows make one point along the slit and ``hbin =
horizontal_binning`` columns make one wavelength bin. The region of interest is centred on the
detector's height and cropped to ``wavelength_range_nm``. Image mode was chosen over multi-track
mode because pylablib 1.4.5 offers horizontal binning and column cropping only in image mode. So
binning stays on the chip (one read noise per binned pixel), and frames stay 16-bit with the
converter's own saturation. The cost: tracks are contiguous (no gaps between points), and pylablib
caps either binning at 32 pixels.

Row order. The image indexing is set to "rct": frame row 0 is the top of the detector's region of
interest. Which end of the slit that is depends on how the camera is mounted on the spectrograph;
check it once with a point source. The simulated spectrometer puts row 0 at x = 0.

Wavelengths come from the spectrograph's ``get_calibration()`` for the whole detector width
(metres, converted to nm), sliced to the same columns and averaged over the same bins as the frame.

pylablib quirks handled here (pylablib 1.4.5): ``temperature=`` is ignored at construction, so the
setpoint is set with ``set_temperature``; the camera opens with its shutter closed and the fan off;
``set_acquisition_mode(mode)`` with its default ``setup_params=True`` sets the wrong mode (off by
one), so it is called with ``setup_params=False``; ``setup_image_mode`` silently drops the binning when
the SDK rejects it, so the region of interest is read back and compared; a missing DLL raises a
builtin OSError, not an AndorError.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
from pylablib.devices import Andor
from pylablib.devices.Andor.atmcd32d_lib import DRV_STATUS, AndorSDK2LibError
from pylablib.devices.Andor.ShamrockCIF_lib import SHAMROCK_ERR, ShamrockLibError

from fluoscan.drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnavailable,
)

log = logging.getLogger(__name__)

DEVICE = "Andor spectrometer"

# pylablib 1.4.5 truncates image-mode binning to at most 32 pixels per axis.
MAX_BINNING_PX = 32
# A spectrograph that lands further than this from the requested centre wavelength is an error.
CENTRE_TOLERANCE_NM = 0.5
TEMPERATURE_POLL_S = 1.0

_DISCONNECTED_CODES = {
    DRV_STATUS.DRV_USBERROR,
    DRV_STATUS.DRV_ERROR_NOCAMERA,
    DRV_STATUS.DRV_ERROR_ACK,
    SHAMROCK_ERR.SHAMROCK_COMMUNICATION_ERROR,
}

_SDK2_MISSING = (
    "the Andor SDK2 library (atmcd64d.dll) could not be loaded. On Windows, install Andor Solis or the "
    "Andor SDK2, or set pylablib.par['devices/dlls/andor_sdk2'] to the folder holding the DLL. "
    "On Linux and macOS, pylablib 1.4.5 only looks for the Windows DLLs and never loads Andor's Linux "
    "libandor.so, so this driver cannot run there; use a Windows computer for the camera, or the "
    '"simulated" driver'
)
_SHAMROCK_MISSING = (
    "the Andor Shamrock library (atspectrograph.dll or ShamrockCIF.dll) could not be loaded. On Windows, "
    "install Andor Solis or the Andor SDK2 (which include it), or set "
    "pylablib.par['devices/dlls/andor_shamrock'] to its folder. On Linux and macOS, pylablib 1.4.5 only "
    "looks for the Windows DLLs"
)


@dataclass(frozen=True)
class ReadoutGeometry:
    """The detector pixels behind each frame pixel.

    Rows are counted from the top of the detector (frame row 0 is the top track), columns from
    detector column 0; stop values are exclusive.
    """

    detector_width_px: int
    detector_height_px: int
    n_points: int
    track_height_px: int
    row_start_px: int
    column_start_px: int
    column_stop_px: int
    column_bin_px: int

    @property
    def n_wavelengths(self) -> int:
        return (self.column_stop_px - self.column_start_px) // self.column_bin_px

    def track_rows_px(self) -> list[tuple[int, int]]:
        """Return the (start, stop) detector rows of each frame row."""
        start = self.row_start_px
        height = self.track_height_px
        return [(start + k * height, start + (k + 1) * height) for k in range(self.n_points)]

    def columns(self) -> tuple[int, int, int]:
        return self.column_start_px, self.column_stop_px, self.column_bin_px


def bin_columns(values: np.ndarray, geometry: ReadoutGeometry, reduce: Callable[..., np.ndarray] = np.mean) -> np.ndarray:
    """Crop per-column values to the frame's columns and combine each bin (mean by default)."""
    start, stop, column_bin = geometry.columns()
    return reduce(np.asarray(values)[start:stop].reshape(-1, column_bin), axis=1)


def columns_in_range(calibration_nm: np.ndarray, wavelength_range_nm: tuple[float, float] | None) -> tuple[int, int]:
    """Return the (start, stop) detector columns whose wavelengths lie in the range; all columns for None.

    Raises
    ------
    DeviceError
        If no column lies in the range.
    """
    if wavelength_range_nm is None:
        return 0, len(calibration_nm)
    low, high = wavelength_range_nm
    inside = np.flatnonzero((calibration_nm >= low) & (calibration_nm <= high))
    if inside.size == 0:
        raise DeviceError(
            f"{DEVICE}: wavelength_range_nm [{low:g}, {high:g}] lies outside the detector's "
            f"{calibration_nm.min():.1f}..{calibration_nm.max():.1f} nm; change wavelength_range_nm or center_wavelength_nm"
        )
    return int(inside[0]), int(inside[-1]) + 1


def _library_error_message(exc: AndorSDK2LibError | ShamrockLibError) -> str:
    return f"SDK function {exc.func} returned error {exc.code} ({exc.name})"


class AndorSpectrometer:
    """An Andor SDK2 camera on a Shamrock spectrograph, set up from a ``SpectrometerConfig``.

    Opening connects the camera, then the spectrograph (Andor recommends this order), selects the
    grating and centre wavelength, sets up the readout, opens the camera shutter, and cools the
    sensor, waiting up to ``temperature_timeout_s`` for a stable temperature.

    Parameters
    ----------
    config : SpectrometerConfig
        The ``[spectrometer]`` section of the configuration.
    exposure_s : float, optional
        Initial exposure; the camera's minimum until :meth:`set_exposure_s` is called.
    clock, sleep : callable
        Time source and sleep function of the cooler wait (replaceable in tests).

    Raises
    ------
    DeviceUnavailable
        If the Andor libraries are missing or no camera or spectrograph is at the configured index.
    DeviceTimeout
        If the sensor temperature does not stabilise in time.
    DeviceError
        If the configuration does not fit the detector, or the SDK rejects a setting.
    """

    def __init__(
        self,
        config: Any,
        *,
        exposure_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._config = config
        self._clock = clock
        self._sleep = sleep
        self._camera: Any = None
        self._spectrograph: Any = None
        self._closed = False
        self._exposure_s = 0.0
        try:
            self._open(exposure_s)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------ opening

    def _open(self, exposure_s: float | None) -> None:
        self._open_camera()
        self._open_spectrograph()
        self._calibration_nm = self._set_up_spectrograph()
        self._geometry = self._set_up_readout()
        self._wavelengths_nm = bin_columns(self._calibration_nm, self._geometry)
        self._set_up_acquisition()
        if exposure_s is not None:
            self.set_exposure_s(exposure_s)
        self._set_up_cooler()
        log.info(
            "%s ready: %s; %d points x %d wavelengths (%.1f-%.1f nm)",
            DEVICE,
            self._identity,
            self._geometry.n_points,
            self._geometry.n_wavelengths,
            self._wavelengths_nm.min(),
            self._wavelengths_nm.max(),
        )

    def _open_camera(self) -> None:
        index = self._config.camera_index
        with self._sdk("open the camera", missing_library=_SDK2_MISSING):
            count = Andor.get_cameras_number_SDK2()
            if index >= count:
                raise DeviceUnavailable(
                    f"{DEVICE}: no Andor camera at camera_index {index} ({count} found); check the USB cable and power, "
                    "and close Andor Solis, which holds the camera while it runs"
                )
            # The fan must run for the thermoelectric cooler to reach low temperatures; pylablib defaults it to "off".
            initial_temperature = None if self._config.temperature_c is not None else "off"
            self._camera = Andor.AndorSDK2Camera(idx=index, temperature=initial_temperature, fan_mode="full")
            controller, head, serial = self._camera.get_device_info()
        self._camera_identity = f"Andor {head} serial {serial} ({controller})"
        log.info("%s: opened camera %s", DEVICE, self._camera_identity)

    def _open_spectrograph(self) -> None:
        index = self._config.spectrograph_index
        with self._sdk("open the spectrograph", missing_library=_SHAMROCK_MISSING):
            serials = Andor.list_shamrock_spectrographs()
            if index >= len(serials):
                raise DeviceUnavailable(
                    f"{DEVICE}: no Shamrock spectrograph at spectrograph_index {index} ({len(serials)} found); "
                    "check its USB cable and power"
                )
            self._spectrograph = Andor.ShamrockSpectrograph(idx=index)
            serial = self._spectrograph.get_device_info().serial_number
        self._identity = f"{self._camera_identity}, Shamrock spectrograph serial {serial}"
        log.info("%s: opened spectrograph serial %s", DEVICE, serial)

    def _set_up_spectrograph(self) -> np.ndarray:
        config = self._config
        spectrograph = self._spectrograph
        with self._sdk("set up the spectrograph"):
            if config.grating is not None:
                count = spectrograph.get_gratings_number()
                if config.grating > count:
                    raise DeviceError(f"{DEVICE}: grating {config.grating} requested, the spectrograph has {count}; change grating")
                spectrograph.set_grating(config.grating)
            grating = spectrograph.get_grating()
            low_m, high_m = spectrograph.get_wavelength_limits()
            centre_nm = config.center_wavelength_nm
            if not low_m * 1e9 <= centre_nm <= high_m * 1e9:
                raise DeviceError(
                    f"{DEVICE}: center_wavelength_nm {centre_nm:g} is outside grating {grating}'s range "
                    f"{low_m * 1e9:.0f}..{high_m * 1e9:.0f} nm; change center_wavelength_nm or grating"
                )
            actual_nm = spectrograph.set_wavelength(centre_nm * 1e-9) * 1e9
            if abs(actual_nm - centre_nm) > CENTRE_TOLERANCE_NM:
                raise DeviceError(f"{DEVICE}: the spectrograph went to {actual_nm:.2f} nm when asked for {centre_nm:g} nm")
            spectrograph.setup_pixels_from_camera(self._camera)
            calibration_nm = np.asarray(spectrograph.get_calibration(), dtype=np.float64) * 1e9
        width, _ = self._camera.get_detector_size()
        steps = np.diff(calibration_nm)
        if calibration_nm.shape != (width,) or not np.all(np.isfinite(calibration_nm)) or not (np.all(steps > 0) or np.all(steps < 0)):
            raise DeviceProtocolError(
                f"{DEVICE}: the spectrograph calibration is not {width} strictly monotonic wavelengths "
                f"(got shape {calibration_nm.shape}); check the spectrograph set-up in Andor Solis"
            )
        log.info("%s: grating %d at %.2f nm covers %.1f-%.1f nm", DEVICE, grating, actual_nm, calibration_nm.min(), calibration_nm.max())
        return calibration_nm

    def _set_up_readout(self) -> ReadoutGeometry:
        config = self._config
        camera = self._camera
        width, height = camera.get_detector_size()
        n_points = config.n_points
        if n_points > height:
            raise DeviceError(f"{DEVICE}: n_points {n_points} exceeds the detector's {height} rows; reduce n_points")
        track_height = config.track_height_px or height // n_points
        if n_points * track_height > height:
            raise DeviceError(
                f"{DEVICE}: n_points {n_points} x track_height_px {track_height} = {n_points * track_height} rows, "
                f"the detector has {height}; reduce either"
            )
        if track_height > MAX_BINNING_PX:
            raise DeviceError(
                f"{DEVICE}: track height {track_height} px exceeds pylablib's image binning limit of {MAX_BINNING_PX}; "
                f"set track_height_px <= {MAX_BINNING_PX} or raise n_points"
            )
        column_bin = config.horizontal_binning
        if column_bin > MAX_BINNING_PX:
            raise DeviceError(f"{DEVICE}: horizontal_binning {column_bin} exceeds pylablib's limit of {MAX_BINNING_PX}")
        column_start, column_stop = columns_in_range(self._calibration_nm, config.wavelength_range_nm)
        column_stop -= (column_stop - column_start) % column_bin
        if column_stop <= column_start:
            raise DeviceError(
                f"{DEVICE}: wavelength_range_nm keeps fewer columns than one bin of horizontal_binning {column_bin}; widen the range"
            )

        # pylablib's region of interest is in SDK coordinates: rows counted from the bottom of the detector.
        bottom = (height - n_points * track_height) // 2
        top = bottom + n_points * track_height
        requested = (column_start, column_stop, bottom, top, column_bin, track_height)
        with self._sdk("set up the readout"):
            camera.set_image_indexing("rct")
            camera.setup_image_mode(*requested)
            applied = tuple(camera.get_roi())
            data_shape = tuple(camera.get_data_dimensions())
        geometry = ReadoutGeometry(
            detector_width_px=width,
            detector_height_px=height,
            n_points=n_points,
            track_height_px=track_height,
            row_start_px=height - top,
            column_start_px=column_start,
            column_stop_px=column_stop,
            column_bin_px=column_bin,
        )
        if applied != requested or data_shape != (n_points, geometry.n_wavelengths):
            raise DeviceError(
                f"{DEVICE}: the camera applied region (hstart, hend, vstart, vend, hbin, vbin) = {applied} with frames of "
                f"{data_shape}, not the requested {requested} with frames of {(n_points, geometry.n_wavelengths)}; "
                "the SDK may reject this binning on this camera: change n_points, track_height_px or horizontal_binning"
            )
        return geometry

    def _set_up_acquisition(self) -> None:
        with self._sdk("set up the acquisition"):
            self._camera.set_trigger_mode("int")
            # One frame per StartAcquisition. setup_params=False avoids pylablib 1.4.5's off-by-one mode bug.
            self._camera.set_acquisition_mode("single", setup_params=False)
            self._camera.setup_acquisition()
            self._camera.setup_shutter("open")

    def _set_up_cooler(self) -> None:
        camera = self._camera
        setpoint = self._config.temperature_c
        with self._sdk("set up the cooler"):
            if setpoint is None:
                camera.set_cooler(False)
                log.info("%s: cooler off", DEVICE)
                return
            applied = camera.set_temperature(setpoint)
        if applied != setpoint:
            log.warning("%s: temperature_c %g is outside the camera's range; the setpoint is %d C", DEVICE, setpoint, applied)
        self._wait_for_stable_temperature(applied, self._config.temperature_timeout_s)

    def _wait_for_stable_temperature(self, setpoint_c: float, timeout_s: float) -> None:
        deadline = self._clock() + timeout_s
        log.info("%s: cooling to %g C (up to %g s)", DEVICE, setpoint_c, timeout_s)
        while True:
            with self._sdk("read the cooler status"):
                status = self._camera.get_temperature_status()
                temperature_c = self._camera.get_temperature()
            if status == "stabilized":
                log.info("%s: sensor stable at %.1f C", DEVICE, temperature_c)
                return
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise DeviceTimeout(
                    f"{DEVICE}: the sensor is at {temperature_c:.1f} C ({status}) and did not stabilise at {setpoint_c:g} C "
                    f"within temperature_timeout_s = {timeout_s:g} s; allow more time, or raise temperature_c "
                    "(how cold the cooler gets depends on the ambient temperature, fan and coolant)"
                )
            log.debug("%s: sensor at %.1f C (%s), %.0f s left", DEVICE, temperature_c, status, remaining)
            self._sleep(min(TEMPERATURE_POLL_S, remaining))

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _sdk(self, command: str, missing_library: str | None = None) -> Iterator[None]:
        """Translate pylablib and SDK errors raised while doing ``command`` into the DeviceError family."""
        try:
            yield
        except DeviceError:
            raise
        except Andor.AndorTimeoutError as exc:
            raise DeviceTimeout(f"{DEVICE}: {command} timed out: {exc}") from exc
        except (AndorSDK2LibError, ShamrockLibError) as exc:
            if exc.code in _DISCONNECTED_CODES:
                raise DeviceDisconnected(
                    f"{DEVICE}: {command} failed, the device is not responding: {_library_error_message(exc)}; "
                    "check its USB cable and power, then open it again"
                ) from exc
            raise DeviceError(f"{DEVICE}: {command} failed: {_library_error_message(exc)}") from exc
        except Andor.AndorError as exc:
            raise DeviceError(f"{DEVICE}: {command} failed: {exc}") from exc
        except OSError as exc:
            if missing_library is None:
                raise
            raise DeviceUnavailable(f"{DEVICE}: {missing_library} (pylablib reported: {exc})") from exc

    def _require_open(self) -> Any:
        if self._camera is None:
            raise DeviceError(f"{DEVICE}: the spectrometer is closed; open a new one")
        return self._camera

    # ------------------------------------------------------------------ the Spectrometer Protocol

    def identity(self) -> str:
        return self._identity

    @property
    def readout_geometry(self) -> ReadoutGeometry:
        return self._geometry

    def detector_calibration_nm(self) -> np.ndarray:
        """Return the wavelength of every detector column, in nm, before cropping and binning."""
        return self._calibration_nm.copy()

    def wavelengths_nm(self) -> np.ndarray:
        return self._wavelengths_nm.copy()

    def frame_shape(self) -> tuple[int, int]:
        return self._geometry.n_points, self._geometry.n_wavelengths

    def frame_dtype(self) -> np.dtype:
        """Return uint16: pylablib reads SDK2 frames with GetImages16."""
        return np.dtype(np.uint16)

    @property
    def exposure_s(self) -> float:
        return self._exposure_s

    def set_exposure_s(self, exposure_s: float) -> float:
        camera = self._require_open()
        if not (math.isfinite(exposure_s) and exposure_s > 0):
            raise DeviceError(f"{DEVICE}: exposure {exposure_s!r} s is invalid; give a positive number of seconds")
        with self._sdk(f"set the exposure to {exposure_s:g} s"):
            self._exposure_s = float(camera.set_exposure(exposure_s))
        log.debug("%s: exposure %g s", DEVICE, self._exposure_s)
        return self._exposure_s

    def temperature_c(self) -> float:
        camera = self._require_open()
        with self._sdk("read the sensor temperature"):
            return float(camera.get_temperature())

    def acquire(self) -> np.ndarray:
        """Expose and read one frame, shape :meth:`frame_shape`, uint16 counts.

        Raises
        ------
        DeviceTimeout
            If no frame arrives within the exposure plus ``frame_timeout_s``.
        DeviceProtocolError
            If the frame data does not match the frame size.
        DeviceError
            If frames were overwritten before being read, or the SDK reports an error.
        """
        camera = self._require_open()
        timeout_s = self._exposure_s + self._config.frame_timeout_s
        with self._sdk("acquire a frame"):
            camera.start_acquisition()
            try:
                camera.wait_for_frame(since="start", nframes=1, timeout=timeout_s)
                frames = camera.read_multiple_images()
                status = camera.get_frames_status()
            except Andor.AndorTimeoutError as exc:
                self._abort_after_error()
                raise DeviceTimeout(
                    f"{DEVICE}: no frame within {timeout_s:g} s (exposure {self._exposure_s:g} s + frame_timeout_s "
                    f"{self._config.frame_timeout_s:g} s); check the camera, or raise frame_timeout_s"
                ) from exc
            except ValueError as exc:
                self._abort_after_error()
                raise DeviceProtocolError(f"{DEVICE}: the camera returned frame data of the wrong size: {exc}") from exc
            except BaseException:
                self._abort_after_error()
                raise
            camera.stop_acquisition()
        return self._checked_frame(frames, status.skipped)

    def _checked_frame(self, frames: list[np.ndarray] | None, skipped: int) -> np.ndarray:
        if skipped:
            raise DeviceError(f"{DEVICE}: {skipped} frame(s) were overwritten in the camera buffer before being read")
        if not frames:
            raise DeviceTimeout(f"{DEVICE}: the acquisition ended without delivering a frame")
        if len(frames) != 1:
            raise DeviceProtocolError(f"{DEVICE}: one exposure delivered {len(frames)} frames, expected 1")
        frame = frames[0]
        if frame.shape != self.frame_shape() or frame.dtype != np.uint16:
            raise DeviceProtocolError(
                f"{DEVICE}: frame of shape {frame.shape} and type {frame.dtype}, expected {self.frame_shape()} uint16"
            )
        return np.ascontiguousarray(frame)

    def _abort_after_error(self) -> None:
        """Stop a failed acquisition, logging (not raising) a second error so that the first one propagates."""
        try:
            self._camera.stop_acquisition()
        except (Andor.AndorError, OSError) as exc:
            log.warning("%s: could not stop the acquisition after an error: %s", DEVICE, exc)

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Close the camera shutter, then release the camera and the spectrograph. Safe to call twice.

        SDK errors while closing are logged, not raised, so that closing after a failure always finishes.
        NOTE: the cooler is left running as pylablib leaves it; Andor advises letting the sensor warm
        above -20 C before switching the camera off.
        """
        if self._closed:
            return
        self._closed = True
        camera, self._camera = self._camera, None
        spectrograph, self._spectrograph = self._spectrograph, None
        if camera is not None:
            self._close_step("close the camera shutter", lambda: camera.setup_shutter("closed"))
            self._close_step("close the camera", camera.close)
        if spectrograph is not None:
            self._close_step("close the spectrograph", spectrograph.close)
        log.info("%s: closed", DEVICE)

    @staticmethod
    def _close_step(what: str, step: Callable[[], Any]) -> None:
        try:
            step()
        except (Andor.AndorError, OSError) as exc:
            log.warning("%s: could not %s: %s", DEVICE, what, exc)

    def __enter__(self) -> AndorSpectrometer:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def open_andor_spectrometer(context: Any) -> AndorSpectrometer:
    """Open the spectrometer that ``context.config.spectrometer`` names (entry point ``fluoscan.spectrometers:andor``).

    The exposure starts at the scan's ``exposure_s``.
    """
    return AndorSpectrometer(context.config.spectrometer, exposure_s=context.config.scan.exposure_s)
