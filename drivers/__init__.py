"""Device Protocols, the driver exception family, and the shipped drivers.

This package imports nothing else from fluoscan.
"""

from fluoscan.drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnavailable,
)
from fluoscan.drivers.protocols import Device, Laser, Spectrometer, Stage

__all__ = [
    "Device",
    "DeviceDisconnected",
    "DeviceError",
    "DeviceProtocolError",
    "DeviceTimeout",
    "DeviceUnavailable",
    "Laser",
    "Spectrometer",
    "Stage",
]
