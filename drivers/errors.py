"""The one exception family that every fluoscan driver raises.

Messages name the device, the command and the value involved, so that a scan can end with a single
clear line. Drivers chain the transport's own exception with ``raise ... from exc``.
"""

from __future__ import annotations


class DeviceError(RuntimeError):
    """A device refused a command, replied with an error, or is in a state that forbids the request."""


class DeviceTimeout(DeviceError, TimeoutError):
    """A device did not reply, or did not reach the requested state, within its timeout."""


class DeviceDisconnected(DeviceError, ConnectionError):
    """The connection to a device was lost and could not be re-established."""


class DeviceProtocolError(DeviceError):
    """A device replied with something the protocol does not allow (garbled, truncated or out of order)."""


class DeviceUnavailable(DeviceError):
    """A device, its port or its vendor library cannot be found or opened."""
