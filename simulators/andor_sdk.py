"""Pure-Python stand-ins for the Andor SDK2 camera library and the Shamrock spectrograph library.

pylablib reaches the vendor DLLs through module-level objects: ``lib`` and ``libctl`` (a
``LibraryController``) in ``pylablib.devices.Andor.AndorSDK2`` and in ``...Andor.Shamrock``.
:func:`install_standin` points both modules at :class:`SimulatedSDK2` and :class:`SimulatedShamrock`,
so that pylablib's real ``AndorSDK2Camera`` and ``ShamrockSpectrograph``, and fluoscan's driver on
top of them, run unchanged. The stand-ins follow the return conventions of pylablib 1.4.5's ctypes
wrappers (``atmcd32d_lib.py``, ``ShamrockCIF_lib.py``) and signal errors as those wrappers do, by
raising ``AndorSDK2LibError(function, code)`` or ``ShamrockLibError(function, code)``.

The camera is modelled on an Andor iDus 420 (DU420A-BEX2-DD): 1024 x 255 pixels of 26 um, 16-bit,
thermoelectric cooling. The spectrograph is a 193 mm Czerny-Turner with a three-grating turret.
Pixel content comes from a *scene* callback, which returns the expected photoelectrons per detector
pixel. The camera adds dark current, shot noise, read noise, gain, offset, on-chip binning and
16-bit saturation.

Simulated time: every duration (exposure, readout, cooling) takes ``duration * time_scale`` real
seconds, and ``time_scale = 0`` makes each of them instant.

Fault injection (:class:`~fluoscan.simulators.faults.FaultPlan`): every SDK call is checked under
its function name (e.g. ``"StartAcquisition"``, ``"ShamrockSetWavelength"``) and every frame under
``"frame"``, counted from 1 per fault.

- REJECT: the call raises its library error (``DRV_ACQUISITION_ERRORS`` for acquisition calls,
  ``DRV_P1INVALID`` otherwise; ``SHAMROCK_P1INVALID``). At a frame, StartAcquisition is rejected.
- DISCONNECT: this call and every later one raise ``DRV_USBERROR`` (``SHAMROCK_COMMUNICATION_ERROR``).
- LATE: the call, or the frame, is held back ``delay_s`` real seconds.
- TIMEOUT: the frame is lost: the acquisition ends without delivering it.
- STALL: the acquisition never finishes: the camera reports ACQUIRING until aborted, no frame arrives.
- GARBLE: the frame's data comes back one row short, so it cannot be reshaped to the frame size.

TIMEOUT, STALL and GARBLE at a named call apply to the frame in progress, or the next frame when
no acquisition runs; GARBLE at ``GetImages16`` corrupts that read.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import IntEnum
from types import SimpleNamespace
from typing import Any

import numpy as np
from pylablib.devices.Andor import AndorSDK2, Shamrock
from pylablib.devices.Andor.atmcd32d_lib import (
    AC_ACQMODE,
    AC_CAMERATYPE,
    AC_FEATURES,
    AC_GETFUNC,
    AC_PIXELMODE,
    AC_READMODE,
    AC_SETFUNC,
    AC_TRIGGERMODE,
    DRV_STATUS,
    AndorSDK2Lib,
    AndorSDK2LibError,
)
from pylablib.devices.Andor.ShamrockCIF_lib import SHAMROCK_ERR, ShamrockLibError

from fluoscan.acquisition.config import PhantomConfig
from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan

log = logging.getLogger(__name__)


class ReadMode(IntEnum):
    """SDK2 read modes (``SetReadMode`` codes)."""

    FVB = 0
    MULTI_TRACK = 1
    RANDOM_TRACK = 2
    SINGLE_TRACK = 3
    IMAGE = 4


class AcquisitionMode(IntEnum):
    """SDK2 acquisition modes (``SetAcquisitionMode`` codes)."""

    SINGLE = 1
    ACCUMULATE = 2
    KINETIC = 3
    FAST_KINETIC = 4
    CONTINUOUS = 5


class ShutterMode(IntEnum):
    """SDK2 shutter modes (``SetShutter`` codes)."""

    AUTO = 0
    OPEN = 1
    CLOSED = 2


class TemperatureStatus(IntEnum):
    """Codes that ``GetTemperatureF`` returns along with the temperature."""

    OFF = DRV_STATUS.DRV_TEMPERATURE_OFF
    NOT_STABILIZED = DRV_STATUS.DRV_TEMPERATURE_NOT_STABILIZED
    STABILIZED = DRV_STATUS.DRV_TEMPERATURE_STABILIZED
    NOT_REACHED = DRV_STATUS.DRV_TEMPERATURE_NOT_REACHED


# ---------------------------------------------------------------------------------------------
# Models: detector, noise, spectrograph, scene


@dataclass(frozen=True)
class DetectorModel:
    """The simulated camera head.

    NOTE: the numbers are from memory of Andor's iDus 420 data sheet: 1024 x 255 pixels of 26 um,
    cooling to about -80 C with air. The head-model string and serial number are illustrative.
    """

    head_model: str = "DU420A-BEX2-DD"
    controller_model: str = "USB"
    serial_number: int = 14_520
    width_px: int = 1024
    height_px: int = 255
    pixel_size_um: float = 26.0
    temperature_range_c: tuple[int, int] = (-100, 20)
    coolest_reachable_c: float = -80.0
    ambient_c: float = 20.0
    cooling_time_constant_s: float = 20.0
    stabilisation_s: float = 10.0
    # The sensor counts as "at the setpoint" within this many degrees.
    setpoint_band_c: float = 1.0
    buffer_frames: int = 32
    hsspeeds_mhz: tuple[float, ...] = (0.1, 0.05)
    vsspeeds_us: tuple[float, ...] = (16.25, 32.25)
    keep_clean_s: float = 0.001
    shutter_min_times_ms: tuple[int, int] = (10, 10)


@dataclass(frozen=True)
class NoiseModel:
    """Detector response: bias, read noise, dark current, conversion gain and converter range."""

    offset_counts: float = 500.0
    read_noise_e: float = 6.0
    dark_current_e_s: float = 0.5
    gain_e_per_count: float = 2.0
    saturation_counts: int = 65535

    @classmethod
    def from_phantom(cls, phantom: PhantomConfig) -> NoiseModel:
        return cls(
            offset_counts=phantom.offset_counts,
            read_noise_e=phantom.read_noise_e,
            dark_current_e_s=phantom.dark_current_e_s,
            gain_e_per_count=phantom.gain_e_per_count,
            saturation_counts=phantom.saturation_counts,
        )

    def digitise(self, expected_e: np.ndarray, n_pixels: int, rng: np.random.Generator) -> np.ndarray:
        """Turn expected photoelectrons per (binned) pixel into 16-bit counts.

        Charge from ``n_pixels`` detector pixels is summed on the chip before one read, so each
        output pixel gets their dark charge, one shot-noise draw and one read-noise draw.
        """
        electrons = rng.poisson(np.clip(expected_e, 0.0, None)).astype(np.float64)
        electrons += rng.normal(0.0, self.read_noise_e, size=electrons.shape) if self.read_noise_e else 0.0
        counts = np.rint(self.offset_counts + electrons / self.gain_e_per_count)
        return np.clip(counts, 0, min(self.saturation_counts, 65535)).astype(np.uint16)


@dataclass(frozen=True)
class Grating:
    lines_per_mm: float
    blaze: str


@dataclass(frozen=True)
class SpectrographModel:
    """A Czerny-Turner spectrograph: focal length, deviation angle and the gratings on its turret.

    NOTE: the deviation angle is chosen so that 600 l/mm at 800 nm spreads about 700-900 nm over a
    26.6 mm wide detector. It is not a published Andor value.
    """

    serial_number: str = "KY-1931"
    focal_length_mm: float = 193.0
    deviation_deg: float = 32.0
    max_rotation_deg: float = 40.0
    gratings: tuple[Grating, ...] = (Grating(600.0, "750nm"), Grating(300.0, "500nm"), Grating(1200.0, "750nm"))

    def wavelength_limits_nm(self, grating: int) -> tuple[float, float]:
        d_nm = 1e6 / self.gratings[grating - 1].lines_per_mm
        half = math.radians(self.deviation_deg / 2)
        return 0.0, 2 * d_nm * math.cos(half) * math.sin(math.radians(self.max_rotation_deg))

    def pixel_wavelengths_nm(self, grating: int, centre_nm: float, n_pixels: int, pixel_um: float) -> np.ndarray:
        """Wavelength at each detector column from the grating equation ``m λ = d (sin α + sin β)``.

        The grating turns by θ, with incidence α = θ - D/2 and diffraction β = θ + D/2 for the
        deviation D. A column x mm from the detector centre receives the light diffracted at β + atan(x / f).
        """
        d_nm = 1e6 / self.gratings[grating - 1].lines_per_mm
        half = math.radians(self.deviation_deg / 2)
        theta = math.asin(centre_nm / (2 * d_nm * math.cos(half)))
        x_mm = (np.arange(n_pixels) - (n_pixels - 1) / 2) * pixel_um * 1e-3
        beta = theta + half + np.arctan(x_mm / self.focal_length_mm)
        return d_nm * (math.sin(theta - half) + np.sin(beta))


@dataclass(frozen=True)
class Exposure:
    """The exposure the camera is about to record: the scene callback's argument."""

    frame_number: int
    exposure_s: float
    # Physical wavelength at each detector column (the spectrograph's true dispersion), in nm.
    wavelengths_nm: np.ndarray
    detector_shape: tuple[int, int]


@dataclass
class SceneFrame:
    """A scene callback's result.

    ``photoelectrons`` is (height, width) expected photoelectrons from light per detector pixel,
    row 0 at the top of the detector; None means no light. ``rng`` draws this frame's noise; None
    uses the camera's own generator.
    """

    photoelectrons: np.ndarray | None = None
    rng: np.random.Generator | None = None


Scene = Callable[[Exposure], SceneFrame]


def _library_call(needs_init: bool = True, locked: bool = True):
    """Wrap a stand-in function: disconnection, fault injection, initialisation check, locking."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: _StandIn, *args: Any) -> Any:
            if not locked:
                self._before_call(name, needs_init)
                return method(self, *args)
            with self._lock:
                self._before_call(name, needs_init)
                return method(self, *args)

        return wrapper

    return decorate


class _StandIn:
    """Shared fault handling of the two stand-in libraries."""

    _error_class: type[Exception] = AndorSDK2LibError
    _disconnect_code: int = DRV_STATUS.DRV_USBERROR

    def __init__(self, faults: FaultPlan | None, sleep: Callable[[float], None]) -> None:
        self._faults = faults
        self._sleep = sleep
        self._lock = threading.RLock()
        self._initialized = False
        self._disconnected = False
        # The latest calls by function name, for tests and debugging.
        self.calls: deque[str] = deque(maxlen=2000)

    def _reject_code(self, name: str) -> int:
        raise NotImplementedError

    def _not_initialized_code(self) -> int:
        raise NotImplementedError

    def _on_frame_fault(self, name: str, fault: Fault) -> None:
        """Apply a TIMEOUT, STALL or GARBLE that was injected at a named call."""

    def _before_call(self, name: str, needs_init: bool) -> None:
        self.calls.append(name)
        if self._disconnected:
            raise self._error_class(name, self._disconnect_code)
        fault = self._faults.check(name) if self._faults is not None else None
        if fault is not None:
            if fault.kind is FaultKind.LATE:
                self._sleep(fault.delay_s)
            elif fault.kind is FaultKind.REJECT:
                raise self._error_class(name, self._reject_code(name))
            elif fault.kind is FaultKind.DISCONNECT:
                self._disconnected = True
                raise self._error_class(name, self._disconnect_code)
            else:
                self._on_frame_fault(name, fault)
        if needs_init and not self._initialized:
            raise self._error_class(name, self._not_initialized_code())

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    def reconnect(self) -> None:
        """Plug the device back in after a DISCONNECT fault (it needs a new Initialize)."""
        with self._lock:
            self._disconnected = False
            self._initialized = False


# ---------------------------------------------------------------------------------------------
# Shamrock


class SimulatedShamrock(_StandIn):
    """Stand-in for pylablib's ``ShamrockLib`` object: one spectrograph with a motorised grating turret."""

    _error_class = ShamrockLibError
    _disconnect_code = SHAMROCK_ERR.SHAMROCK_COMMUNICATION_ERROR

    def __init__(
        self,
        model: SpectrographModel | None = None,
        *,
        faults: FaultPlan | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(faults, sleep)
        self.model = model or SpectrographModel()
        self.grating = 1
        self.wavelength_nm = 0.0
        self.pixel_width_um = 0.0
        self.number_pixels = 0
        self.slit_width_um = 100.0
        self.detector_offset = 0
        self.grating_offsets = [0] * len(self.model.gratings)

    def _reject_code(self, name: str) -> int:
        return SHAMROCK_ERR.SHAMROCK_P1INVALID

    def _not_initialized_code(self) -> int:
        return SHAMROCK_ERR.SHAMROCK_NOT_INITIALIZED

    def _check_device(self, name: str, device: int) -> None:
        if device != 0:
            raise ShamrockLibError(name, SHAMROCK_ERR.SHAMROCK_P1INVALID)

    def _check_grating(self, name: str, grating: int) -> None:
        if not 1 <= grating <= len(self.model.gratings):
            raise ShamrockLibError(name, SHAMROCK_ERR.SHAMROCK_P2INVALID)

    def physical_wavelengths_nm(self, n_pixels: int, pixel_um: float) -> np.ndarray:
        """Return the true wavelength at each of ``n_pixels`` detector columns, whatever the calibration settings."""
        with self._lock:
            return self.model.pixel_wavelengths_nm(self.grating, self.wavelength_nm, n_pixels, pixel_um)

    @_library_call(needs_init=False)
    def ShamrockInitialize(self, ini_path: Any) -> None:
        self._initialized = True

    @_library_call()
    def ShamrockClose(self) -> None:
        self._initialized = False

    @_library_call()
    def ShamrockGetNumberDevices(self) -> int:
        return 1

    @_library_call()
    def ShamrockGetSerialNumber(self, device: int) -> str:
        self._check_device("ShamrockGetSerialNumber", device)
        return self.model.serial_number

    @_library_call()
    def ShamrockEepromGetOpticalParams(self, device: int) -> tuple[float, float, float]:
        # NOTE: the SDK's units for these are not established; focal length is given in m, angles in degrees.
        return self.model.focal_length_mm * 1e-3, self.model.deviation_deg, 0.0

    @_library_call()
    def ShamrockGetNumberGratings(self, device: int) -> int:
        return len(self.model.gratings)

    @_library_call()
    def ShamrockGetGrating(self, device: int) -> int:
        return self.grating

    @_library_call()
    def ShamrockSetGrating(self, device: int, grating: int) -> None:
        self._check_grating("ShamrockSetGrating", grating)
        self.grating = grating

    @_library_call()
    def ShamrockGetGratingInfo(self, device: int, grating: int) -> tuple[float, str, int, int]:
        self._check_grating("ShamrockGetGratingInfo", grating)
        info = self.model.gratings[grating - 1]
        return info.lines_per_mm, info.blaze, 0, self.grating_offsets[grating - 1]

    @_library_call()
    def ShamrockGetGratingOffset(self, device: int, grating: int) -> int:
        self._check_grating("ShamrockGetGratingOffset", grating)
        return self.grating_offsets[grating - 1]

    @_library_call()
    def ShamrockSetGratingOffset(self, device: int, grating: int, offset: int) -> None:
        self._check_grating("ShamrockSetGratingOffset", grating)
        self.grating_offsets[grating - 1] = int(offset)

    @_library_call()
    def ShamrockGetDetectorOffset(self, device: int) -> int:
        return self.detector_offset

    @_library_call()
    def ShamrockSetDetectorOffset(self, device: int, offset: int) -> None:
        self.detector_offset = int(offset)

    @_library_call()
    def ShamrockGetTurret(self, device: int) -> int:
        return 1

    @_library_call()
    def ShamrockSetTurret(self, device: int, turret: int) -> None:
        if turret != 1:
            raise ShamrockLibError("ShamrockSetTurret", SHAMROCK_ERR.SHAMROCK_P2INVALID)

    @_library_call()
    def ShamrockWavelengthIsPresent(self, device: int) -> int:
        return 1

    @_library_call()
    def ShamrockGetWavelength(self, device: int) -> float:
        return self.wavelength_nm

    @_library_call()
    def ShamrockSetWavelength(self, device: int, wavelength_nm: float) -> None:
        low, high = self.model.wavelength_limits_nm(self.grating)
        if not low <= wavelength_nm <= high:
            raise ShamrockLibError("ShamrockSetWavelength", SHAMROCK_ERR.SHAMROCK_P2INVALID)
        # The drive moves in steps, modelled as a resolution of 0.01 nm.
        self.wavelength_nm = round(float(wavelength_nm), 2)

    @_library_call()
    def ShamrockGetWavelengthLimits(self, device: int, grating: int) -> tuple[float, float]:
        self._check_grating("ShamrockGetWavelengthLimits", grating)
        return self.model.wavelength_limits_nm(grating)

    @_library_call()
    def ShamrockWavelengthReset(self, device: int) -> None:
        self.wavelength_nm = 0.0

    @_library_call()
    def ShamrockAtZeroOrder(self, device: int) -> int:
        return int(self.wavelength_nm == 0.0)

    @_library_call()
    def ShamrockGotoZeroOrder(self, device: int) -> None:
        self.wavelength_nm = 0.0

    # Only the input side slit is motorised; no shutter, filter wheel, flipper, iris, focus mirror or accessory port.

    @_library_call()
    def ShamrockAutoSlitIsPresent(self, device: int, slit: int) -> int:
        return int(slit == 1)

    @_library_call()
    def ShamrockGetAutoSlitWidth(self, device: int, slit: int) -> float:
        if slit != 1:
            raise ShamrockLibError("ShamrockGetAutoSlitWidth", SHAMROCK_ERR.SHAMROCK_NOT_AVAILABLE)
        return self.slit_width_um

    @_library_call()
    def ShamrockSetAutoSlitWidth(self, device: int, slit: int, width_um: float) -> None:
        if slit != 1:
            raise ShamrockLibError("ShamrockSetAutoSlitWidth", SHAMROCK_ERR.SHAMROCK_NOT_AVAILABLE)
        if not 10.0 <= width_um <= 2500.0:
            raise ShamrockLibError("ShamrockSetAutoSlitWidth", SHAMROCK_ERR.SHAMROCK_P3INVALID)
        self.slit_width_um = float(width_um)

    @_library_call()
    def ShamrockAutoSlitReset(self, device: int, slit: int) -> None:
        self.slit_width_um = 10.0

    @_library_call()
    def ShamrockShutterIsPresent(self, device: int) -> int:
        return 0

    @_library_call()
    def ShamrockFilterIsPresent(self, device: int) -> int:
        return 0

    @_library_call()
    def ShamrockFlipperMirrorIsPresent(self, device: int, flipper: int) -> int:
        return 0

    @_library_call()
    def ShamrockIrisIsPresent(self, device: int, iris: int) -> int:
        return 0

    @_library_call()
    def ShamrockFocusMirrorIsPresent(self, device: int) -> int:
        return 0

    @_library_call()
    def ShamrockAccessoryIsPresent(self, device: int) -> int:
        return 0

    @_library_call()
    def ShamrockGetPixelWidth(self, device: int) -> float:
        return self.pixel_width_um

    @_library_call()
    def ShamrockSetPixelWidth(self, device: int, width_um: float) -> None:
        if width_um <= 0:
            raise ShamrockLibError("ShamrockSetPixelWidth", SHAMROCK_ERR.SHAMROCK_P2INVALID)
        self.pixel_width_um = float(width_um)

    @_library_call()
    def ShamrockGetNumberPixels(self, device: int) -> int:
        return self.number_pixels

    @_library_call()
    def ShamrockSetNumberPixels(self, device: int, number: int) -> None:
        if number < 0:
            raise ShamrockLibError("ShamrockSetNumberPixels", SHAMROCK_ERR.SHAMROCK_P2INVALID)
        self.number_pixels = int(number)

    @_library_call()
    def ShamrockGetCalibration(self, device: int, number_pixels: int) -> list[float]:
        if self.pixel_width_um <= 0:
            raise ShamrockLibError("ShamrockGetCalibration", SHAMROCK_ERR.SHAMROCK_P2INVALID)
        wavelengths = self.model.pixel_wavelengths_nm(self.grating, self.wavelength_nm, number_pixels, self.pixel_width_um)
        # The SDK fills a float array.
        return [float(value) for value in wavelengths.astype(np.float32)]


# ---------------------------------------------------------------------------------------------
# SDK2 camera


def _capabilities() -> SimpleNamespace:
    """Return the ``AndorCapabilities`` bit masks of an iDus: no EM gain, no frame transfer, no fast kinetics."""
    return SimpleNamespace(
        ulSize=52,
        ulAcqModes=AC_ACQMODE.AC_ACQMODE_SINGLE
        | AC_ACQMODE.AC_ACQMODE_VIDEO
        | AC_ACQMODE.AC_ACQMODE_ACCUMULATE
        | AC_ACQMODE.AC_ACQMODE_KINETIC,
        ulReadModes=AC_READMODE.AC_READMODE_FULLIMAGE
        | AC_READMODE.AC_READMODE_SUBIMAGE
        | AC_READMODE.AC_READMODE_SINGLETRACK
        | AC_READMODE.AC_READMODE_FVB
        | AC_READMODE.AC_READMODE_MULTITRACK
        | AC_READMODE.AC_READMODE_RANDOMTRACK,
        ulFTReadModes=0,
        ulTriggerModes=AC_TRIGGERMODE.AC_TRIGGERMODE_INTERNAL | AC_TRIGGERMODE.AC_TRIGGERMODE_EXTERNAL,
        # pylablib 1.4.5 checks set_cooler against the GetFunctions TEMPERATURE bit (0x01) within
        # ulSetFunctions, where 0x01 is the VREADOUT bit. An iDus has both, so the mix-up does not matter here.
        ulSetFunctions=AC_SETFUNC.AC_SETFUNCTION_VREADOUT
        | AC_SETFUNC.AC_SETFUNCTION_HREADOUT
        | AC_SETFUNC.AC_SETFUNCTION_TEMPERATURE,
        ulGetFunctions=AC_GETFUNC.AC_GETFUNCTION_TEMPERATURE
        | AC_GETFUNC.AC_GETFUNCTION_TARGETTEMPERATURE
        | AC_GETFUNC.AC_GETFUNCTION_TEMPERATURERANGE
        | AC_GETFUNC.AC_GETFUNCTION_DETECTORSIZE,
        ulFeatures=AC_FEATURES.AC_FEATURES_POLLING
        | AC_FEATURES.AC_FEATURES_SHUTTER
        | AC_FEATURES.AC_FEATURES_FANCONTROL
        | AC_FEATURES.AC_FEATURES_TEMPERATUREDURINGACQUISITION,
        ulPCICard=0,
        ulEMGainCapability=0,
        ulPixelMode=AC_PIXELMODE.AC_PIXELMODE_16BIT | AC_PIXELMODE.AC_PIXELMODE_MONO,
        ulCameraType=AC_CAMERATYPE.AC_CAMERATYPE_IDUS,
        ulFeatures2=0,
    )


@dataclass
class _Acquisition:
    """The state of one acquisition, from StartAcquisition to the end of its series."""

    target_frames: int | None
    cycle_s: float
    next_due: float | None
    frames_done: int = 0
    events: int = 0
    frame_fault: Fault | None = None
    running: bool = True
    # The frame being exposed, rendered when its exposure starts so that rendering time overlaps
    # the exposure instead of adding to it.
    pending_frame: np.ndarray | None = None


@dataclass
class _Cooler:
    on: bool = False
    setpoint_c: int = 20
    start_c: float = 20.0
    changed_at: float = 0.0


@dataclass
class _Readout:
    mode: ReadMode = ReadMode.IMAGE
    image: tuple[int, int, int, int, int, int] = (1, 1, 1, 1024, 1, 255)
    single_track: tuple[int, int] = (128, 1)
    multi_track: tuple[int, int, int] = (1, 1, 0)
    random_tracks: list[tuple[int, int]] = field(default_factory=lambda: [(1, 1)])


class SimulatedSDK2(_StandIn):
    """Stand-in for pylablib's ``AndorSDK2Lib`` object: one iDus-like camera.

    Parameters
    ----------
    scene : callable, optional
        Called once per frame with an :class:`Exposure`; returns a :class:`SceneFrame`.
    noise : NoiseModel, optional
        Detector response.
    time_scale : float
        Real seconds per simulated second; 0 makes exposures, readout and cooling instant.
    readout_s : float
        Simulated readout time per frame, in s.
    spectrograph : SimulatedShamrock, optional
        Where the light comes from: it gives the wavelength of each detector column to the scene.
    faults : FaultPlan, optional
        Faults to inject (see the module documentation).
    """

    _error_class = AndorSDK2LibError
    _disconnect_code = DRV_STATUS.DRV_USBERROR

    # pylablib's higher-level helpers call only the SDK functions below, so they run unchanged on the stand-in.
    get_all_amp_modes = AndorSDK2Lib.get_all_amp_modes
    get_amp_mode_description = AndorSDK2Lib.get_amp_mode_description
    set_amp_mode = AndorSDK2Lib.set_amp_mode

    def __init__(
        self,
        scene: Scene | None = None,
        *,
        detector: DetectorModel | None = None,
        noise: NoiseModel | None = None,
        time_scale: float = 0.0,
        readout_s: float = 0.01,
        spectrograph: SimulatedShamrock | None = None,
        faults: FaultPlan | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        seed: int = 0,
    ) -> None:
        super().__init__(faults, sleep)
        self.scene = scene
        self.detector = detector or DetectorModel()
        self.noise = noise or NoiseModel()
        self.time_scale = float(time_scale)
        self.readout_s = float(readout_s)
        self.spectrograph = spectrograph
        self._clock = clock
        self._rng = np.random.default_rng(seed)
        self._handle = 100
        self._current = 100

        self.exposure_s = 0.0
        self.kinetic_cycle_s = 0.0
        self.accumulate_cycle_s = 0.0
        self.number_kinetics = 1
        self.number_accumulations = 1
        self.acquisition_mode = AcquisitionMode.SINGLE
        self.trigger_mode = 0
        self.fan_mode = 2
        self.shutter_mode = ShutterMode.CLOSED
        self.readout = _Readout(image=(1, 1, 1, self.detector.width_px, 1, self.detector.height_px))
        self._cooler = _Cooler(setpoint_c=int(self.detector.ambient_c), start_c=self.detector.ambient_c)
        self._acquisition: _Acquisition | None = None
        self._buffer: dict[int, np.ndarray] = {}
        self._pending_fault: Fault | None = None
        self._garble_read = False

    # ------------------------------------------------------------------ fault plumbing

    def _reject_code(self, name: str) -> int:
        if name in ("StartAcquisition", "PrepareAcquisition"):
            return DRV_STATUS.DRV_ACQUISITION_ERRORS
        return DRV_STATUS.DRV_P1INVALID

    def _not_initialized_code(self) -> int:
        return DRV_STATUS.DRV_NOT_INITIALIZED

    def _on_frame_fault(self, name: str, fault: Fault) -> None:
        if fault.kind is FaultKind.GARBLE and name in ("GetImages16", "GetImages"):
            self._garble_read = True
        elif self._acquisition is not None and self._acquisition.running:
            self._apply_frame_fault(self._acquisition, fault, self._clock())
        else:
            self._pending_fault = fault

    def _require_idle(self, name: str) -> None:
        self._advance()
        if self._acquisition is not None and self._acquisition.running:
            raise AndorSDK2LibError(name, DRV_STATUS.DRV_ACQUIRING)

    # ------------------------------------------------------------------ simulated time

    def _real_s(self, simulated_s: float) -> float:
        return simulated_s * self.time_scale

    def _simulated_elapsed_s(self, since: float) -> float:
        if self.time_scale == 0:
            return math.inf
        return (self._clock() - since) / self.time_scale

    def _cooler_target_c(self) -> float:
        if not self._cooler.on:
            return self.detector.ambient_c
        return max(float(self._cooler.setpoint_c), self.detector.coolest_reachable_c)

    def sensor_temperature_c(self) -> float:
        """Return the simulated sensor temperature: an exponential approach to the cooler's target."""
        target = self._cooler_target_c()
        elapsed = self._simulated_elapsed_s(self._cooler.changed_at)
        decay = math.exp(-elapsed / self.detector.cooling_time_constant_s) if math.isfinite(elapsed) else 0.0
        return target + (self._cooler.start_c - target) * decay

    def _temperature_status(self) -> TemperatureStatus:
        if not self._cooler.on:
            return TemperatureStatus.OFF
        setpoint = float(self._cooler.setpoint_c)
        band = self.detector.setpoint_band_c
        if setpoint < self.detector.coolest_reachable_c - band:
            return TemperatureStatus.NOT_REACHED
        distance = abs(self._cooler.start_c - setpoint)
        reach_s = self.detector.cooling_time_constant_s * math.log(distance / band) if distance > band else 0.0
        elapsed = self._simulated_elapsed_s(self._cooler.changed_at)
        if elapsed < reach_s:
            return TemperatureStatus.NOT_REACHED
        if elapsed < reach_s + self.detector.stabilisation_s:
            return TemperatureStatus.NOT_STABILIZED
        return TemperatureStatus.STABILIZED

    def _change_cooler(self, **changes: Any) -> None:
        self._cooler.start_c = self.sensor_temperature_c()
        self._cooler.changed_at = self._clock()
        for name, value in changes.items():
            setattr(self._cooler, name, value)

    # ------------------------------------------------------------------ acquisition engine

    def _cycle_s(self) -> float:
        cycle = self.exposure_s + self.readout_s
        if self.acquisition_mode in (AcquisitionMode.KINETIC, AcquisitionMode.CONTINUOUS):
            cycle = max(cycle, self.kinetic_cycle_s)
        return cycle

    def _apply_frame_fault(self, acquisition: _Acquisition, fault: Fault | None, started: float) -> None:
        acquisition.frame_fault = fault
        acquisition.next_due = started + self._real_s(acquisition.cycle_s)
        if fault is None:
            return
        if fault.kind is FaultKind.LATE:
            acquisition.next_due += fault.delay_s
        elif fault.kind is FaultKind.STALL:
            acquisition.next_due = None
        elif fault.kind is FaultKind.DISCONNECT:
            self._disconnected = True
            acquisition.next_due = None

    def _begin_frame(self, acquisition: _Acquisition, started: float) -> Fault | None:
        fault = self._faults.check("frame") if self._faults is not None else None
        if fault is None:
            fault, self._pending_fault = self._pending_fault, None
        self._apply_frame_fault(acquisition, fault, started)
        delivered = fault is None or fault.kind in (FaultKind.LATE, FaultKind.GARBLE)
        acquisition.pending_frame = (
            self._render_frame(acquisition.frames_done + 1, garbled=self._frame_garbled(acquisition)) if delivered else None
        )
        return fault

    def _advance(self) -> None:
        """Complete every frame whose time has come (at most one per call when timing is instant)."""
        acquisition = self._acquisition
        if acquisition is None:
            return
        completed = 0
        while acquisition.running and acquisition.next_due is not None and self._clock() >= acquisition.next_due:
            if acquisition.frame_fault is not None and acquisition.frame_fault.kind is FaultKind.TIMEOUT:
                log.info("simulated camera lost frame %d", acquisition.frames_done + 1)
                acquisition.running = False
                return
            if acquisition.frame_fault is not None and acquisition.frame_fault.kind is FaultKind.REJECT:
                acquisition.running = False
                return
            self._store_frame(acquisition.frames_done + 1, acquisition.pending_frame)
            acquisition.frames_done += 1
            acquisition.events += 1
            completed += 1
            if acquisition.target_frames is not None and acquisition.frames_done >= acquisition.target_frames:
                acquisition.running = False
                return
            self._begin_frame(acquisition, acquisition.next_due)
            if self.time_scale == 0 or completed >= self.detector.buffer_frames:
                return

    @staticmethod
    def _frame_garbled(acquisition: _Acquisition) -> bool:
        return acquisition.frame_fault is not None and acquisition.frame_fault.kind is FaultKind.GARBLE

    def _readout_bins(self) -> tuple[list[tuple[int, int]], tuple[int, int, int]]:
        """Return the detector rows (0-based from the bottom, [start, stop)) of each output row, and (first column, stop column, column bin)."""
        width, height = self.detector.width_px, self.detector.height_px
        mode = self.readout.mode
        if mode is ReadMode.IMAGE:
            hbin, vbin, hstart, hend, vstart, vend = self.readout.image
            rows = [(start, start + vbin) for start in range(vstart - 1, vend, vbin)]
            return rows, (hstart - 1, hend, hbin)
        if mode is ReadMode.FVB:
            return [(0, height)], (0, width, 1)
        if mode is ReadMode.SINGLE_TRACK:
            centre, track_height = self.readout.single_track
            start = centre - 1 - (track_height - 1) // 2
            return [(start, start + track_height)], (0, width, 1)
        if mode is ReadMode.MULTI_TRACK:
            bottom, gap = self._multi_track_layout(*self.readout.multi_track)
            number, track_height, _ = self.readout.multi_track
            pitch = track_height + gap
            return [(bottom - 1 + k * pitch, bottom - 1 + k * pitch + track_height) for k in range(number)], (0, width, 1)
        return [(start - 1, stop) for start, stop in self.readout.random_tracks], (0, width, 1)

    def _store_frame(self, frame_number: int, frame: np.ndarray) -> None:
        self._buffer[frame_number] = frame.ravel()
        self._buffer.pop(frame_number - self.detector.buffer_frames, None)

    def _render_frame(self, frame_number: int, garbled: bool) -> np.ndarray:
        """Render the digitised frame (rows, columns) the scene gives for this exposure."""
        width, height = self.detector.width_px, self.detector.height_px
        wavelengths = (
            self.spectrograph.physical_wavelengths_nm(width, self.detector.pixel_size_um)
            if self.spectrograph is not None
            else np.full(width, np.nan)
        )
        exposure = Exposure(frame_number, self.exposure_s, wavelengths, (height, width))
        scene = self.scene(exposure) if self.scene is not None else SceneFrame()
        rng = scene.rng if scene.rng is not None else self._rng
        light = scene.photoelectrons
        if light is None or self.shutter_mode is ShutterMode.CLOSED:
            light = np.zeros((height, width))
        if light.shape != (height, width):
            raise ValueError(f"scene returned photoelectrons of shape {light.shape}, the detector is {(height, width)}")

        # The SDK delivers rows from the bottom of the detector; the scene counts them from the top.
        from_bottom = np.asarray(light, dtype=np.float64)[::-1]
        rows, (column_start, column_stop, column_bin) = self._readout_bins()
        binned_rows = np.stack([from_bottom[start:stop].sum(axis=0) for start, stop in rows])
        columns = binned_rows[:, column_start:column_stop]
        binned = columns.reshape(len(rows), -1, column_bin).sum(axis=2)
        pixels_per_bin = (rows[0][1] - rows[0][0]) * column_bin
        binned += self.noise.dark_current_e_s * self.exposure_s * pixels_per_bin
        frame = self.noise.digitise(binned, pixels_per_bin, rng)
        if garbled:
            log.info("simulated camera garbles frame %d", frame_number)
            frame = frame[:-1]
        return frame

    def _multi_track_layout(self, number: int, track_height: int, offset: int) -> tuple[int, int]:
        # NOTE: tracks are spread evenly and centred; the real SDK's exact placement is not documented here.
        height = self.detector.height_px
        gap = (height - number * track_height) // (number - 1) if number > 1 else 0
        used = number * track_height + (number - 1) * gap
        bottom = (height - used) // 2 + 1 + offset
        return bottom, gap

    # ------------------------------------------------------------------ library and camera selection

    @_library_call(needs_init=False)
    def Initialize(self, ini_path: Any) -> None:
        self._initialized = True

    @_library_call()
    def ShutDown(self) -> None:
        self._initialized = False
        self._acquisition = None
        self._buffer.clear()

    @_library_call(needs_init=False)
    def GetVersionInfo(self, kind: int) -> bytes:
        return b"2.104.30000.0 (stand-in)"

    @_library_call(needs_init=False)
    def GetAvailableCameras(self) -> int:
        return 1

    @_library_call(needs_init=False)
    def GetCameraHandle(self, index: int) -> int:
        if index != 0:
            raise AndorSDK2LibError("GetCameraHandle", DRV_STATUS.DRV_P1INVALID)
        return self._handle

    @_library_call(needs_init=False)
    def GetCurrentCamera(self) -> int:
        return self._current

    @_library_call(needs_init=False)
    def SetCurrentCamera(self, handle: int) -> None:
        if handle != self._handle:
            raise AndorSDK2LibError("SetCurrentCamera", DRV_STATUS.DRV_P1INVALID)
        self._current = handle

    # ------------------------------------------------------------------ information

    @_library_call()
    def GetCapabilities(self) -> SimpleNamespace:
        return _capabilities()

    @_library_call()
    def GetControllerCardModel(self) -> bytes:
        return self.detector.controller_model.encode()

    @_library_call()
    def GetHeadModel(self) -> bytes:
        return self.detector.head_model.encode()

    @_library_call()
    def GetCameraSerialNumber(self) -> int:
        return self.detector.serial_number

    @_library_call()
    def GetPixelSize(self) -> tuple[float, float]:
        return self.detector.pixel_size_um, self.detector.pixel_size_um

    @_library_call()
    def GetDetector(self) -> tuple[int, int]:
        return self.detector.width_px, self.detector.height_px

    # ------------------------------------------------------------------ amplifiers and shift speeds

    @_library_call()
    def GetNumberADChannels(self) -> int:
        return 1

    @_library_call()
    def GetBitDepth(self, channel: int) -> int:
        return 16

    @_library_call()
    def GetNumberAmp(self) -> int:
        return 1

    @_library_call()
    def GetAmpDesc(self, index: int) -> bytes:
        return b"Conventional"

    @_library_call()
    def GetNumberHSSpeeds(self, channel: int, amplifier: int) -> int:
        return len(self.detector.hsspeeds_mhz)

    @_library_call()
    def GetHSSpeed(self, channel: int, amplifier: int, index: int) -> float:
        return self.detector.hsspeeds_mhz[index]

    @_library_call()
    def GetNumberPreAmpGains(self) -> int:
        return 1

    @_library_call()
    def GetPreAmpGain(self, index: int) -> float:
        return 1.0

    @_library_call()
    def IsPreAmpGainAvailable(self, channel: int, amplifier: int, hsspeed: int, preamp: int) -> int:
        return 1

    @_library_call()
    def SetADChannel(self, channel: int) -> None:
        pass

    @_library_call()
    def SetOutputAmplifier(self, amplifier: int) -> None:
        pass

    @_library_call()
    def SetHSSpeed(self, amplifier: int, index: int) -> None:
        if not 0 <= index < len(self.detector.hsspeeds_mhz):
            raise AndorSDK2LibError("SetHSSpeed", DRV_STATUS.DRV_P2INVALID)

    @_library_call()
    def SetPreAmpGain(self, index: int) -> None:
        pass

    @_library_call()
    def GetNumberVSSpeeds(self) -> int:
        return len(self.detector.vsspeeds_us)

    @_library_call()
    def GetVSSpeed(self, index: int) -> float:
        return self.detector.vsspeeds_us[index]

    @_library_call()
    def GetFastestRecommendedVSSpeed(self) -> tuple[int, float]:
        return 0, self.detector.vsspeeds_us[0]

    @_library_call()
    def SetVSSpeed(self, index: int) -> None:
        if not 0 <= index < len(self.detector.vsspeeds_us):
            raise AndorSDK2LibError("SetVSSpeed", DRV_STATUS.DRV_P1INVALID)

    @_library_call()
    def get_EMCCD_gain(self) -> tuple[int, bool]:
        raise AndorSDK2LibError("GetEMCCDGain", DRV_STATUS.DRV_NOT_AVAILABLE)

    @_library_call()
    def set_EMCCD_gain(self, gain: int, advanced: bool | None = None) -> None:
        raise AndorSDK2LibError("SetEMCCDGain", DRV_STATUS.DRV_NOT_AVAILABLE)

    # ------------------------------------------------------------------ cooling, fan, shutter, trigger, aux ports

    @_library_call()
    def GetTemperatureF(self) -> tuple[int, float]:
        return int(self._temperature_status()), float(np.float32(self.sensor_temperature_c()))

    @_library_call()
    def GetTemperatureRange(self) -> tuple[int, int]:
        return self.detector.temperature_range_c

    @_library_call()
    def SetTemperature(self, temperature_c: int) -> None:
        low, high = self.detector.temperature_range_c
        if not low <= temperature_c <= high:
            raise AndorSDK2LibError("SetTemperature", DRV_STATUS.DRV_P1INVALID)
        self._change_cooler(setpoint_c=int(temperature_c))

    @_library_call()
    def CoolerON(self) -> None:
        self._change_cooler(on=True)

    @_library_call()
    def CoolerOFF(self) -> None:
        self._change_cooler(on=False)

    @_library_call()
    def IsCoolerOn(self) -> int:
        return int(self._cooler.on)

    @_library_call()
    def SetFanMode(self, mode: int) -> None:
        if mode not in (0, 1, 2):
            raise AndorSDK2LibError("SetFanMode", DRV_STATUS.DRV_P1INVALID)
        self.fan_mode = mode

    @_library_call()
    def GetShutterMinTimes(self) -> tuple[int, int]:
        return self.detector.shutter_min_times_ms

    @_library_call()
    def SetShutter(self, ttl_mode: int, mode: int, closing_ms: int, opening_ms: int) -> None:
        try:
            self.shutter_mode = ShutterMode(mode)
        except ValueError:
            raise AndorSDK2LibError("SetShutter", DRV_STATUS.DRV_P2INVALID) from None

    @_library_call()
    def SetTriggerMode(self, mode: int) -> None:
        if mode not in (0, 1):
            raise AndorSDK2LibError("SetTriggerMode", DRV_STATUS.DRV_P1INVALID)
        self.trigger_mode = mode

    @_library_call()
    def GetTriggerLevelRange(self) -> tuple[float, float]:
        raise AndorSDK2LibError("GetTriggerLevelRange", DRV_STATUS.DRV_NOT_SUPPORTED)

    @_library_call()
    def SetTriggerLevel(self, level: float) -> None:
        raise AndorSDK2LibError("SetTriggerLevel", DRV_STATUS.DRV_NOT_SUPPORTED)

    @_library_call()
    def SetTriggerInvert(self, invert: int) -> None:
        raise AndorSDK2LibError("SetTriggerInvert", DRV_STATUS.DRV_NOT_SUPPORTED)

    @_library_call()
    def SetExternalTriggerTermination(self, termination: int) -> None:
        raise AndorSDK2LibError("SetExternalTriggerTermination", DRV_STATUS.DRV_NOT_SUPPORTED)

    @_library_call()
    def SendSoftwareTrigger(self) -> None:
        raise AndorSDK2LibError("SendSoftwareTrigger", DRV_STATUS.DRV_NOT_SUPPORTED)

    @_library_call()
    def InAuxPort(self, port: int) -> int:
        return 0

    @_library_call()
    def OutAuxPort(self, port: int, state: int) -> None:
        pass

    # ------------------------------------------------------------------ timing and acquisition modes

    @_library_call()
    def SetExposureTime(self, exposure_s: float) -> None:
        self._require_idle("SetExposureTime")
        if exposure_s < 0:
            raise AndorSDK2LibError("SetExposureTime", DRV_STATUS.DRV_P1INVALID)
        # The SDK keeps times as C floats.
        self.exposure_s = float(np.float32(exposure_s))

    @_library_call()
    def GetAcquisitionTimings(self) -> tuple[float, float, float]:
        accumulate = max(self.accumulate_cycle_s, self.exposure_s + self.readout_s)
        return self.exposure_s, float(np.float32(accumulate)), float(np.float32(self._cycle_s()))

    @_library_call()
    def GetReadOutTime(self) -> float:
        return self.readout_s

    @_library_call()
    def GetKeepCleanTime(self) -> float:
        return self.detector.keep_clean_s

    @_library_call()
    def SetAcquisitionMode(self, mode: int) -> None:
        self._require_idle("SetAcquisitionMode")
        if mode not in (AcquisitionMode.SINGLE, AcquisitionMode.ACCUMULATE, AcquisitionMode.KINETIC, AcquisitionMode.CONTINUOUS):
            raise AndorSDK2LibError("SetAcquisitionMode", DRV_STATUS.DRV_P1INVALID)
        self.acquisition_mode = AcquisitionMode(mode)

    @_library_call()
    def SetNumberAccumulations(self, number: int) -> None:
        if number < 1:
            raise AndorSDK2LibError("SetNumberAccumulations", DRV_STATUS.DRV_P1INVALID)
        self.number_accumulations = number

    @_library_call()
    def SetNumberKinetics(self, number: int) -> None:
        if number < 1:
            raise AndorSDK2LibError("SetNumberKinetics", DRV_STATUS.DRV_P1INVALID)
        self.number_kinetics = number

    @_library_call()
    def SetNumberPrescans(self, number: int) -> None:
        pass

    @_library_call()
    def SetKineticCycleTime(self, cycle_s: float) -> None:
        self.kinetic_cycle_s = float(cycle_s)

    @_library_call()
    def SetAccumulationCycleTime(self, cycle_s: float) -> None:
        self.accumulate_cycle_s = float(cycle_s)

    @_library_call()
    def SetFrameTransferMode(self, enable: int) -> None:
        if enable:
            raise AndorSDK2LibError("SetFrameTransferMode", DRV_STATUS.DRV_P1INVALID)

    # ------------------------------------------------------------------ read modes

    @_library_call()
    def SetReadMode(self, mode: int) -> None:
        self._require_idle("SetReadMode")
        try:
            self.readout.mode = ReadMode(mode)
        except ValueError:
            raise AndorSDK2LibError("SetReadMode", DRV_STATUS.DRV_P1INVALID) from None

    @_library_call()
    def SetSingleTrack(self, centre: int, track_height: int) -> None:
        height = self.detector.height_px
        if not 1 <= centre <= height:
            raise AndorSDK2LibError("SetSingleTrack", DRV_STATUS.DRV_P1INVALID)
        start = centre - 1 - (track_height - 1) // 2
        if track_height < 1 or start < 0 or start + track_height > height:
            raise AndorSDK2LibError("SetSingleTrack", DRV_STATUS.DRV_P2INVALID)
        self.readout.single_track = (centre, track_height)

    @_library_call()
    def SetMultiTrack(self, number: int, track_height: int, offset: int) -> tuple[int, int]:
        height = self.detector.height_px
        if not 1 <= number <= height:
            raise AndorSDK2LibError("SetMultiTrack", DRV_STATUS.DRV_P1INVALID)
        if track_height < 1 or number * track_height > height:
            raise AndorSDK2LibError("SetMultiTrack", DRV_STATUS.DRV_P2INVALID)
        bottom, gap = self._multi_track_layout(number, track_height, offset)
        if bottom < 1 or bottom - 1 + number * track_height + (number - 1) * gap > height:
            raise AndorSDK2LibError("SetMultiTrack", DRV_STATUS.DRV_P3INVALID)
        self.readout.multi_track = (number, track_height, offset)
        return bottom, gap

    @_library_call()
    def SetRandomTracks(self, tracks: list[tuple[int, int]]) -> None:
        """Set tracks as 1-based inclusive (first row, last row) pairs, as pylablib's wrapper passes them."""
        pairs = [(int(first), int(last)) for first, last in tracks]
        previous = 0
        for first, last in pairs:
            if not previous < first <= last <= self.detector.height_px:
                raise AndorSDK2LibError("SetRandomTracks", DRV_STATUS.DRV_P2INVALID)
            previous = last
        self.readout.random_tracks = pairs

    @_library_call()
    def SetImage(self, hbin: int, vbin: int, hstart: int, hend: int, vstart: int, vend: int) -> None:
        width, height = self.detector.width_px, self.detector.height_px
        if not 1 <= hstart <= hend <= width:
            raise AndorSDK2LibError("SetImage", DRV_STATUS.DRV_P3INVALID if hstart < 1 else DRV_STATUS.DRV_P4INVALID)
        if not 1 <= vstart <= vend <= height:
            raise AndorSDK2LibError("SetImage", DRV_STATUS.DRV_P5INVALID if vstart < 1 else DRV_STATUS.DRV_P6INVALID)
        if hbin < 1 or (hend - hstart + 1) % hbin:
            raise AndorSDK2LibError("SetImage", DRV_STATUS.DRV_P1INVALID)
        if vbin < 1 or (vend - vstart + 1) % vbin:
            raise AndorSDK2LibError("SetImage", DRV_STATUS.DRV_P2INVALID)
        self.readout.image = (hbin, vbin, hstart, hend, vstart, vend)

    # ------------------------------------------------------------------ acquisition

    @_library_call()
    def PrepareAcquisition(self) -> None:
        self._require_idle("PrepareAcquisition")

    @_library_call()
    def StartAcquisition(self) -> None:
        self._require_idle("StartAcquisition")
        if self.acquisition_mode is AcquisitionMode.KINETIC:
            target: int | None = self.number_kinetics
        elif self.acquisition_mode is AcquisitionMode.CONTINUOUS:
            target = None
        else:
            # NOTE: an accumulation series is delivered as one frame of one exposure, not as a sum.
            target = 1
        acquisition = _Acquisition(target_frames=target, cycle_s=self._cycle_s(), next_due=None)
        self._buffer.clear()
        fault = self._begin_frame(acquisition, self._clock())
        if fault is not None and fault.kind is FaultKind.REJECT:
            raise AndorSDK2LibError("StartAcquisition", DRV_STATUS.DRV_ACQUISITION_ERRORS)
        self._acquisition = acquisition

    @_library_call()
    def AbortAcquisition(self) -> None:
        self._advance()
        if self._acquisition is None or not self._acquisition.running:
            raise AndorSDK2LibError("AbortAcquisition", DRV_STATUS.DRV_IDLE)
        self._acquisition.running = False

    @_library_call()
    def GetStatus(self) -> int:
        self._advance()
        running = self._acquisition is not None and self._acquisition.running
        return DRV_STATUS.DRV_ACQUIRING if running else DRV_STATUS.DRV_IDLE

    @_library_call()
    def GetAcquisitionProgress(self) -> tuple[int, int]:
        self._advance()
        done = self._acquisition.frames_done if self._acquisition is not None else 0
        return done, done

    @_library_call()
    def GetSizeOfCircularBuffer(self) -> int:
        return self.detector.buffer_frames

    @_library_call(locked=False)
    def WaitForAcquisitionByHandleTimeOut(self, handle: int, timeout_ms: int) -> None:
        """Return at the next completed frame; raise DRV_NO_NEW_DATA after ``timeout_ms`` without one."""
        deadline = self._clock() + timeout_ms * 1e-3
        while True:
            with self._lock:
                self._advance()
                acquisition = self._acquisition
                if acquisition is not None and acquisition.events > 0:
                    acquisition.events -= 1
                    return
                now = self._clock()
                due = acquisition.next_due if acquisition is not None and acquisition.running else None
            if now >= deadline:
                raise AndorSDK2LibError("WaitForAcquisitionByHandleTimeOut", DRV_STATUS.DRV_NO_NEW_DATA)
            wake = deadline if due is None else min(deadline, max(due, now))
            self._sleep(max(wake - now, 0.0))

    def _read_images(self, name: str, first: int, last: int, size: int, dtype: type) -> tuple[np.ndarray, int, int]:
        self._advance()
        done = self._acquisition.frames_done if self._acquisition is not None else 0
        oldest = max(1, done - self.detector.buffer_frames + 1)
        if not oldest <= first <= done:
            raise AndorSDK2LibError(name, DRV_STATUS.DRV_P1INVALID)
        if not first <= last <= done:
            raise AndorSDK2LibError(name, DRV_STATUS.DRV_P2INVALID)
        data = np.concatenate([self._buffer[number] for number in range(first, last + 1)]).astype(dtype)
        if self._garble_read:
            self._garble_read = False
            log.info("simulated camera garbles the read of frames %d..%d", first, last)
            return data[: data.size // 2], first, last
        if data.size > size:
            raise AndorSDK2LibError(name, DRV_STATUS.DRV_P4INVALID)
        return data, first, last

    @_library_call()
    def GetImages16(self, first: int, last: int, size: int) -> tuple[np.ndarray, int, int]:
        return self._read_images("GetImages16", first, last, size, np.uint16)

    @_library_call()
    def GetImages(self, first: int, last: int, size: int) -> tuple[np.ndarray, int, int]:
        return self._read_images("GetImages", first, last, size, np.uint32)

    @_library_call()
    def FreeInternalMemory(self) -> None:
        self._require_idle("FreeInternalMemory")
        self._buffer.clear()


# ---------------------------------------------------------------------------------------------
# Installation

_install_lock = threading.Lock()
_installed: list[tuple[SimulatedSDK2, SimulatedShamrock | None]] = []


@contextlib.contextmanager
def install_standin(sdk: SimulatedSDK2, shamrock: SimulatedShamrock | None = None) -> Iterator[None]:
    """Point pylablib's Andor SDK2 (and, when given, Shamrock) library objects at the stand-ins.

    Each module gets a fresh ``LibraryController`` around the stand-in, marked initialised so that
    the DLL loader never runs. The original ``lib`` and ``libctl`` objects are restored on exit.
    Without ``shamrock`` the real Shamrock library object stays in place, which on Linux raises
    the OSError of a missing DLL.

    Raises
    ------
    RuntimeError
        If stand-ins are already installed: pylablib's module-level library can only point at one.
    """
    with _install_lock:
        if _installed:
            raise RuntimeError("an Andor SDK stand-in is already installed; close the other simulated spectrometer first")
        _installed.append((sdk, shamrock))
    originals = [(AndorSDK2, AndorSDK2.lib, AndorSDK2.libctl)]
    AndorSDK2.lib = sdk
    AndorSDK2.libctl = AndorSDK2.LibraryController(sdk)
    AndorSDK2.libctl.initialized = True
    if shamrock is not None:
        originals.append((Shamrock, Shamrock.lib, Shamrock.libctl))
        Shamrock.lib = shamrock
        Shamrock.libctl = Shamrock.LibraryController(shamrock)
        Shamrock.libctl.initialized = True
    log.debug("installed the Andor SDK stand-in (Shamrock: %s)", shamrock is not None)
    try:
        yield
    finally:
        for module, lib, libctl in originals:
            module.lib = lib
            module.libctl = libctl
        with _install_lock:
            _installed.clear()
        log.debug("restored pylablib's Andor libraries")
