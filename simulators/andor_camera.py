"""The simulated iDus camera behind the SDK2 stand-in: settings, cooler, acquisition timing, frames.

:class:`_SimulatedCamera` contains the state that the SDK2 functions of
:class:`~fluoscan.simulators.andor_sdk2.SimulatedSDK2` read and change, and renders each frame
from the scene callback, binned as the read mode sets. :mod:`fluoscan.simulators.andor_sdk`
describes the simulated time and the fault injection.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from types import SimpleNamespace
from typing import Any

import numpy as np
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
    AndorSDK2LibError,
)

from fluoscan.simulators.andor_detector import DetectorModel, Exposure, NoiseModel, Scene, SceneFrame
from fluoscan.simulators.andor_standin import _StandIn
from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan
from fluoscan.simulators.shamrock import SimulatedShamrock

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


class _SimulatedCamera(_StandIn):
    """The camera behind :class:`~fluoscan.simulators.andor_sdk2.SimulatedSDK2`, which documents the parameters."""

    _error_class = AndorSDK2LibError
    _disconnect_code = DRV_STATUS.DRV_USBERROR

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
