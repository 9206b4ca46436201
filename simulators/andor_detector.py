"""The simulated Andor camera head and the light it records: detector, noise model, scene callback.

The SDK2 stand-in (:mod:`fluoscan.simulators.andor_sdk2`) renders each frame from a *scene*
callback, which returns the expected photoelectrons per detector pixel, and digitises it with a
:class:`NoiseModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fluoscan.acquisition.config import PhantomConfig


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
