"""Pure-Python stand-in for the Andor SDK2 camera library: the SDK2 functions that pylablib calls.

:class:`SimulatedSDK2` takes the place of pylablib's ``AndorSDK2Lib`` object once
:func:`fluoscan.simulators.andor_sdk.install_standin` has installed it. The camera behind the
functions (cooler, acquisition timing, frame rendering) is in :mod:`fluoscan.simulators.andor_camera`.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import numpy as np
from pylablib.devices.Andor.atmcd32d_lib import DRV_STATUS, AndorSDK2Lib, AndorSDK2LibError

from fluoscan.simulators.andor_camera import (
    AcquisitionMode,
    ReadMode,
    ShutterMode,
    _Acquisition,
    _capabilities,
    _SimulatedCamera,
)
from fluoscan.simulators.andor_standin import _library_call
from fluoscan.simulators.faults import FaultKind

log = logging.getLogger(__name__)


class SimulatedSDK2(_SimulatedCamera):
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
        Faults to inject (see :mod:`fluoscan.simulators.andor_sdk`).
    """

    # pylablib's higher-level helpers call only the SDK functions below, so they run unchanged on the stand-in.
    get_all_amp_modes = AndorSDK2Lib.get_all_amp_modes
    get_amp_mode_description = AndorSDK2Lib.get_amp_mode_description
    set_amp_mode = AndorSDK2Lib.set_amp_mode

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
