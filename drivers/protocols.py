"""The device Protocols that the scan orchestrator depends on.

Units are part of every name: millimetres (``_mm``), milliwatts (``_mw``), seconds (``_s``),
nanometres (``_nm``), degrees Celsius (``_c``). Every driver is a context manager. It opens in a
known state in ``__init__`` (or a factory) and releases the device in ``close``, which is safe to
call twice.
"""

from __future__ import annotations

from types import TracebackType
from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Device(Protocol):
    """Anything the scan opens: it has an identity and can be closed."""

    def identity(self) -> str:
        """Return the device's own identity string (maker, model, serial number, firmware)."""
        ...

    def close(self) -> None: ...

    def __enter__(self) -> Device: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


@runtime_checkable
class Laser(Device, Protocol):
    """An excitation laser with a power setpoint and a switchable emission."""

    def wavelength_nm(self) -> float:
        """Return the wavelength the laser reports, in nm."""
        ...

    def power_limits_mw(self) -> tuple[float, float]:
        """Return the minimum and maximum power setpoint the laser accepts, in mW."""
        ...

    def set_power_mw(self, power_mw: float) -> None: ...

    def power_setpoint_mw(self) -> float: ...

    def power_mw(self) -> float:
        """Return the measured output power, in mW."""
        ...

    def set_emission(self, on: bool) -> None:
        """Switch emission on or off and wait until the laser reports the new state."""
        ...

    def emission(self) -> bool: ...

    def interlock_closed(self) -> bool:
        """Return True when the safety interlock (and key switch, where present) allows emission."""
        ...


@runtime_checkable
class Stage(Device, Protocol):
    """A single-axis motorized translation stage."""

    def is_homed(self) -> bool: ...

    def home(self) -> None:
        """Home the axis and wait until it is idle."""
        ...

    def limits_mm(self) -> tuple[float, float]:
        """Return the travel range the scan may use, in mm (soft limits within the device's own)."""
        ...

    def move_to(self, position_mm: float) -> float:
        """Move to an absolute position, wait until idle, and return the position read back, in mm."""
        ...

    def position_mm(self) -> float: ...

    def stop(self) -> None: ...


@runtime_checkable
class Spectrometer(Device, Protocol):
    """A CCD camera on an imaging spectrograph: one frame is (points along the slit, wavelengths)."""

    def set_exposure_s(self, exposure_s: float) -> float:
        """Set the exposure time and return the value the camera actually uses, in s."""
        ...

    def wavelengths_nm(self) -> np.ndarray:
        """Return the wavelength of each frame column, in nm, sliced and binned like the frame."""
        ...

    def frame_shape(self) -> tuple[int, int]:
        """Return (n_points, n_wavelengths), the shape of every frame from :meth:`acquire`."""
        ...

    def frame_dtype(self) -> np.dtype:
        """Return the data type of every frame from :meth:`acquire` (uint16 for a 16-bit camera)."""
        ...

    def temperature_c(self) -> float:
        """Return the sensor temperature, in degrees Celsius."""
        ...

    def acquire(self) -> np.ndarray:
        """Expose and read one frame of shape :meth:`frame_shape`, in detector counts."""
        ...
