"""Pure-Python stand-in for the Andor Shamrock spectrograph library, and the spectrograph's optics.

:class:`SimulatedShamrock` takes the place of pylablib's ``ShamrockLib`` object once
:func:`fluoscan.simulators.andor_sdk.install_standin` has installed it. :class:`SpectrographModel`
gives the true wavelength at each detector column, which the SDK2 stand-in passes to the scene.
:mod:`fluoscan.simulators.andor_sdk` describes the fault injection.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from pylablib.devices.Andor.ShamrockCIF_lib import SHAMROCK_ERR, ShamrockLibError

from fluoscan.simulators.andor_standin import _library_call, _StandIn
from fluoscan.simulators.faults import FaultPlan


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
