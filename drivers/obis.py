"""Coherent OBIS laser driver: OBIS SCPI over PyVISA, on a serial port or a TCP socket.

Wire protocol, as implemented here and in :mod:`fluoscan.simulators.laser`:

- Lines end in ``\\r\\n`` both ways. The driver switches handshaking on at open
  (``SYST:COMM:HAND ON``), so the reply to every set command is ``OK`` and the reply to every
  query is ``<value>\\r\\nOK``. The reply to a rejected command is ``ERR-<code>`` instead, and
  the laser keeps the details in its error queue (``SYST:ERR:NEXT?``).
- Powers are in watts on the wire and in milliwatts in this API.

Failure handling:

- No reply within ``timeout_s`` raises :class:`DeviceTimeout`. The next command first waits up
  to ``timeout_s`` more for the late reply and discards it.
- A dropped connection costs one reconnect and one repeat of the command (every OBIS command
  sent here sets an absolute value, so repeating it is harmless), then :class:`DeviceDisconnected`.
- A reply that is not ASCII, lacks its ``OK`` or is not a valid value for the query makes the
  driver discard pending input and raise :class:`DeviceProtocolError`. A read-only query is
  repeated once first, because repeating it cannot change the laser.
- ``set_emission(False)`` is the safety path: on any failure it reconnects, tries once more and
  only then raises.

Every wait is bounded. A call returns within a few ``timeout_s`` (one wait for a late reply, one
reply, one reconnect and one repeat), plus ``emission_timeout_s`` for ``set_emission(True)``.
The retry of ``set_emission(False)`` can double that.

``close`` releases the port but does not switch emission off: the scan does that explicitly, and
an OBIS laser keeps its state when the host disconnects.

The command vocabulary and the transactions (handshake, error queue, timeouts, reconnects) are in
:mod:`fluoscan.drivers.obis_scpi`.
"""

from __future__ import annotations

import logging
import math
import time
from types import TracebackType
from typing import Any

import pyvisa

from fluoscan.drivers.errors import DeviceDisconnected, DeviceError, DeviceTimeout, DeviceUnavailable
from fluoscan.drivers.obis_scpi import (
    OK,
    Command,
    ObisConnection,
    ObisStatus,
    Switch,
    _ConnectionLost,
    parse_switch,
)

log = logging.getLogger(__name__)

EMISSION_POLL_S = 0.05


class ObisLaser(ObisConnection):
    """A Coherent OBIS laser (or anything speaking its SCPI dialect) behind a VISA resource.

    Opening puts the laser in a known state: handshaking on, error queue cleared, identity and
    wavelength checked against the configuration, power limits read, emission off.

    Parameters
    ----------
    resource
        VISA resource, ``"ASRL/dev/ttyACM0::INSTR"`` (serial) or
        ``"TCPIP::127.0.0.1::5000::SOCKET"`` (TCP).
    wavelength_nm
        Wavelength the laser must report (``laser.wavelength_nm``).
    wavelength_tolerance_nm
        Maximum accepted difference between reported and expected wavelength.
    timeout_s
        Time allowed for each reply.
    emission_timeout_s
        Time allowed for emission to switch on, including the 5 s CDRH delay when it is enabled.
    baud_rate
        Serial baud rate; ignored for TCP resources.
    resource_manager
        A PyVISA resource manager, e.g. ``pyvisa.ResourceManager("obis-sim.yaml@sim")``. By default
        the driver opens a pyvisa-py one (``"@py"``) and closes it in :meth:`close`.

    Raises
    ------
    DeviceUnavailable
        If the resource cannot be opened or connected to.
    DeviceError
        If the laser's wavelength differs from ``wavelength_nm`` by more than the tolerance, or a
        command during opening fails.
    """

    def __init__(
        self,
        resource: str,
        *,
        wavelength_nm: float,
        wavelength_tolerance_nm: float = 5.0,
        timeout_s: float = 2.0,
        emission_timeout_s: float = 10.0,
        baud_rate: int = 115200,
        resource_manager: pyvisa.ResourceManager | None = None,
    ) -> None:
        super().__init__(resource, timeout_s=timeout_s, baud_rate=baud_rate, resource_manager=resource_manager)
        self.emission_timeout_s = emission_timeout_s
        self._expected_wavelength_nm = wavelength_nm
        self._wavelength_tolerance_nm = wavelength_tolerance_nm

        self._identity = ""
        self._wavelength_nm = math.nan
        self._limits_mw = (math.nan, math.nan)

        try:
            self._resource = self._open_resource()
            self._initialise()
        except BaseException:
            self.close()
            raise

    @classmethod
    def from_config(
        cls,
        config: Any,
        *,
        resource: str | None = None,
        resource_manager: pyvisa.ResourceManager | None = None,
    ) -> ObisLaser:
        """Open the laser a ``laser`` configuration section describes.

        ``resource`` overrides ``config.resource`` (the simulator passes the address it serves on).
        """
        resource = resource if resource is not None else config.resource
        if not resource:
            raise DeviceUnavailable(
                'laser.resource is not set: give the VISA resource of the OBIS laser, e.g. "ASRL/dev/ttyACM0::INSTR"'
            )
        return cls(
            resource,
            wavelength_nm=config.wavelength_nm,
            wavelength_tolerance_nm=config.wavelength_tolerance_nm,
            timeout_s=config.timeout_s,
            emission_timeout_s=config.emission_timeout_s,
            baud_rate=config.baud_rate,
            resource_manager=resource_manager,
        )

    # Opening and closing

    def _initialise(self) -> None:
        self._drain()
        try:
            self._switch_handshake_on()
        except _ConnectionLost as exc:
            # pyvisa-py "opens" a TCP socket resource even when the connection is refused; the
            # first write is where that shows.
            raise DeviceUnavailable(
                f"cannot connect to OBIS laser at {self.resource_name}: {exc}; check that the laser (or its "
                "simulator) is running and that laser.resource gives the right address"
            ) from exc
        except DeviceTimeout as exc:
            raise DeviceTimeout(
                f"{exc}; the device at {self.resource_name} does not reply like an OBIS laser: "
                f"check laser.baud_rate ({self.baud_rate}) and that the laser is switched on"
            ) from exc
        self.clear_errors()

        self._identity = self.query(Command.IDENTITY, str)
        log.info("OBIS laser at %s identifies as %r", self.resource_name, self._identity)
        self._wavelength_nm = self.query(Command.WAVELENGTH, float)
        self._check_wavelength()
        low_w = self.query(Command.POWER_LIMIT_LOW, float)
        high_w = self.query(Command.POWER_LIMIT_HIGH, float)
        self._limits_mw = (low_w * 1000.0, high_w * 1000.0)
        log.info(
            "OBIS laser at %s: %g nm, power limits %g to %g mW",
            self.resource_name,
            self._wavelength_nm,
            *self._limits_mw,
        )
        self._switch_emission_off()

    def _check_wavelength(self) -> None:
        difference_nm = abs(self._wavelength_nm - self._expected_wavelength_nm)
        if not difference_nm <= self._wavelength_tolerance_nm:
            raise DeviceError(
                f"OBIS laser at {self.resource_name} reports {self._wavelength_nm:g} nm, but laser.wavelength_nm "
                f"is {self._expected_wavelength_nm:g} nm (tolerance {self._wavelength_tolerance_nm:g} nm): "
                "connect the right laser or correct laser.wavelength_nm"
            )

    def __enter__(self) -> ObisLaser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ObisLaser({self.resource_name!r})"

    # The Laser Protocol

    def identity(self) -> str:
        """Return the ``*IDN?`` reply read at open."""
        return self._identity

    def wavelength_nm(self) -> float:
        """Return the wavelength the laser reported at open (``SYST:INF:WAV?``), in nm."""
        return self._wavelength_nm

    def power_limits_mw(self) -> tuple[float, float]:
        """Return the power setpoint limits read at open (``SOUR:POW:LIM:LOW?``/``HIGH?``), in mW."""
        return self._limits_mw

    def set_power_mw(self, power_mw: float) -> None:
        """Set the power setpoint, after checking it against the laser's limits.

        Raises
        ------
        DeviceError
            If ``power_mw`` is outside :meth:`power_limits_mw`; nothing is sent then.
        """
        low_mw, high_mw = self._limits_mw
        if not low_mw <= power_mw <= high_mw:
            raise DeviceError(
                f"OBIS laser at {self.resource_name}: power {power_mw:g} mW is outside the laser's limits "
                f"{low_mw:g} to {high_mw:g} mW; set laser.power_mw within them"
            )
        self.command(f"{Command.POWER_SETPOINT.value} {power_mw / 1000.0:.6f}")
        log.info("OBIS laser at %s: power setpoint %g mW", self.resource_name, power_mw)

    def power_setpoint_mw(self) -> float:
        return self.query(Command.POWER_SETPOINT_QUERY, float) * 1000.0

    def power_mw(self) -> float:
        """Return the measured output power (``SOUR:POW:LEV?``), in mW; 0 while emission is off."""
        return self.query(Command.POWER_MEASURED, float) * 1000.0

    def emission(self) -> bool:
        return self.query(Command.EMISSION_QUERY, parse_switch)

    def interlock_closed(self) -> bool:
        """Return True when the interlock is closed (``SYST:LOCK?`` is OK) and the key switch is on."""
        lock_closed = self.query(Command.INTERLOCK, str) == OK
        return lock_closed and ObisStatus.STANDBY not in self.status()

    def status(self) -> ObisStatus:
        """Return the status word (``SYST:STAT?``)."""
        return ObisStatus(self.query(Command.STATUS, lambda text: int(text, 16)))

    def set_emission(self, on: bool) -> None:
        """Switch emission on or off and wait until the laser reports the new state.

        Switching on checks the interlock, key switch and fault bit first, then waits up to
        ``emission_timeout_s`` for ``SOUR:AM:STAT?`` to report ON, since the laser holds emission back
        for the CDRH delay. Switching off reconnects and tries once more on any failure.

        Raises
        ------
        DeviceError
            If the interlock is open, the key switch is off or the laser reports a fault.
        DeviceTimeout
            If emission does not switch on within ``emission_timeout_s``; the driver then sends
            ``SOUR:AM:STAT OFF`` so that a delayed start cannot follow.
        """
        if on:
            self._switch_emission_on()
        else:
            self._switch_emission_off_with_retry()

    # Emission

    def _switch_emission_on(self) -> None:
        self._check_ready_for_emission()
        try:
            self.command(f"{Command.EMISSION.value} {Switch.ON.value}")
            self._wait_for_emission()
        except DeviceError:
            # The laser may have accepted the command, and would then start after the CDRH delay.
            self._abandon_emission_on()
            raise
        log.info("OBIS laser at %s: emission on", self.resource_name)

    def _wait_for_emission(self) -> None:
        deadline = time.monotonic() + self.emission_timeout_s
        while not self.emission():
            remaining_s = deadline - time.monotonic()
            if remaining_s <= 0:
                raise DeviceTimeout(
                    f"OBIS laser at {self.resource_name}: emission did not switch on within "
                    f"{self.emission_timeout_s:g} s after {Command.EMISSION.value} ON (the CDRH delay is 5 s "
                    "when SYST:CDRH is ON); raise laser.emission_timeout_s or check the laser's status"
                )
            time.sleep(min(EMISSION_POLL_S, remaining_s))

    def _check_ready_for_emission(self) -> None:
        lock_reply = self.query(Command.INTERLOCK, str)
        if lock_reply != OK:
            raise DeviceError(
                f"OBIS laser at {self.resource_name}: interlock open ({Command.INTERLOCK.value} returned "
                f"{lock_reply!r}); close the interlock before switching emission on"
            )
        status = self.status()
        if ObisStatus.STANDBY in status:
            raise DeviceError(
                f"OBIS laser at {self.resource_name}: key switch off (status word {status.value:08X} has the "
                "standby bit); turn the key on before switching emission on"
            )
        if status & (ObisStatus.LASER_FAULT | ObisStatus.HARDWARE_FAULT):
            fault = self.query(Command.FAULT, str)
            raise DeviceError(
                f"OBIS laser at {self.resource_name} reports a fault (status word {status.value:08X}, "
                f"fault word {fault}); clear the fault at the laser before switching emission on"
            )

    def _abandon_emission_on(self) -> None:
        try:
            self._switch_emission_off_with_retry()
        except DeviceError as exc:
            log.critical("OBIS laser at %s: could not cancel the pending emission: %s", self.resource_name, exc)

    def _switch_emission_off(self) -> None:
        self.command(f"{Command.EMISSION.value} {Switch.OFF.value}")
        deadline = time.monotonic() + self.timeout_s
        while self.emission():
            if time.monotonic() >= deadline:
                raise DeviceError(
                    f"OBIS laser at {self.resource_name} still reports emission ON {self.timeout_s:g} s after "
                    f"{Command.EMISSION.value} OFF; switch the laser off at its key switch or interlock"
                )
            time.sleep(EMISSION_POLL_S)
        log.info("OBIS laser at %s: emission off", self.resource_name)

    def _switch_emission_off_with_retry(self) -> None:
        if self._closed:
            raise DeviceDisconnected(f"OBIS laser at {self.resource_name} is closed; open it again to switch emission off")
        try:
            self._switch_emission_off()
            return
        except DeviceError as exc:
            log.error(
                "OBIS laser at %s: switching emission off failed (%s); reconnecting and trying once more",
                self.resource_name,
                exc,
            )
        try:
            with self._lock:
                self._reconnect()
            self._switch_emission_off()
        except DeviceError as exc:
            log.critical("OBIS laser at %s: could not switch emission off: %s", self.resource_name, exc)
            raise type(exc)(
                f"{exc}; emission may still be ON: switch the laser off at its key switch or interlock"
            ) from exc


def open_obis_laser(context: Any) -> ObisLaser:
    """Open the OBIS laser that ``context.config.laser`` names (entry point ``fluoscan.lasers:obis``).

    Raises
    ------
    DeviceUnavailable
        If ``laser.resource`` is not set or cannot be opened.
    """
    return ObisLaser.from_config(context.config.laser)
