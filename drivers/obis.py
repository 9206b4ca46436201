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
"""

from __future__ import annotations

import logging
import math
import select
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum, IntEnum, IntFlag
from types import TracebackType
from typing import Any, TypeVar

import pyvisa
from pyvisa import constants as visa_constants

from fluoscan.drivers.errors import (
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnavailable,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

TERMINATION = "\r\n"
OK = "OK"
# Silence that ends the discarding of stale input, in s.
DRAIN_QUIET_S = 0.05
EMISSION_POLL_S = 0.05
MAX_QUEUED_ERRORS = 32


class Command(str, Enum):
    """OBIS commands in their short SCPI form. Queries end in ``?``."""

    IDENTITY = "*IDN?"
    HANDSHAKE = "SYST:COMM:HAND"
    ERROR_COUNT = "SYST:ERR:COUN?"
    ERROR_NEXT = "SYST:ERR:NEXT?"
    ERROR_CLEAR = "SYST:ERR:CLE"
    WAVELENGTH = "SYST:INF:WAV?"
    RATED_POWER = "SYST:INF:POW?"
    SERIAL_NUMBER = "SYST:INF:SNUM?"
    FIRMWARE = "SYST:INF:FVER?"
    INTERLOCK = "SYST:LOCK?"
    STATUS = "SYST:STAT?"
    FAULT = "SYST:FAUL?"
    CDRH = "SYST:CDRH"
    EMISSION = "SOUR:AM:STAT"
    EMISSION_QUERY = "SOUR:AM:STAT?"
    POWER_SETPOINT = "SOUR:POW:LEV:IMM:AMPL"
    POWER_SETPOINT_QUERY = "SOUR:POW:LEV:IMM:AMPL?"
    POWER_MEASURED = "SOUR:POW:LEV?"
    POWER_LIMIT_LOW = "SOUR:POW:LIM:LOW?"
    POWER_LIMIT_HIGH = "SOUR:POW:LIM:HIGH?"


class Switch(str, Enum):
    ON = "ON"
    OFF = "OFF"


class ObisErrorCode(IntEnum):
    """Codes of ``ERR-<code>`` replies and error-queue entries.

    NOTE: taken from public OBIS drivers, not from Coherent's manual, which was not available.
    """

    NO_ERROR = 0
    UNRECOGNIZED_COMMAND = 100
    SYNTAX_ERROR = 102
    MISSING_PARAMETER = 109
    EXECUTION_ERROR = 200
    COMMAND_PROTECTED = 203
    INVALID_PARAMETER = 220
    SETTINGS_CONFLICT = 221
    DEVICE_UNAVAILABLE = 241
    QUEUE_FULL = 350


class ObisStatus(IntFlag):
    """Bits of the ``SYST:STAT?`` status word (8 hex digits).

    NOTE: bit positions follow a public OBIS driver, not Coherent's manual. A key switch has no bit
    of its own, so this driver and the simulator take STANDBY as "key switch off".
    """

    LASER_FAULT = 0x0001
    EMISSION = 0x0002
    READY = 0x0004
    STANDBY = 0x0008
    CDRH_DELAY = 0x0010
    HARDWARE_FAULT = 0x0020
    ERROR_QUEUED = 0x0040
    WARMED_UP = 0x0100


class _ConnectionLost(Exception):
    """The transport failed, so the caller reconnects or raises DeviceDisconnected."""


def parse_switch(text: str) -> bool:
    """Return True for ``ON`` and False for ``OFF``, or raise ValueError for anything else."""
    if text == Switch.ON.value:
        return True
    if text == Switch.OFF.value:
        return False
    raise ValueError(f"expected ON or OFF, got {text!r}")


def parse_error_entry(text: str) -> tuple[int, str]:
    """Split an error-queue entry ``<code>,"<message>"`` into its code and message."""
    code_text, separator, message = text.partition(",")
    if not separator:
        raise ValueError(f'expected <code>,"<message>", got {text!r}')
    return int(code_text), message.strip().strip('"')


def error_code_name(code: int) -> str:
    try:
        return ObisErrorCode(code).name.lower().replace("_", " ")
    except ValueError:
        return "unknown error code"


class ObisLaser:
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
        self.resource_name = resource
        self.timeout_s = timeout_s
        self.emission_timeout_s = emission_timeout_s
        self.baud_rate = baud_rate
        self._expected_wavelength_nm = wavelength_nm
        self._wavelength_tolerance_nm = wavelength_tolerance_nm
        self._owns_manager = resource_manager is None
        self._manager = resource_manager if resource_manager is not None else pyvisa.ResourceManager("@py")
        self._resource: Any = None
        self._lock = threading.RLock()
        # Reply lines still owed after a timeout, and until when to wait for them.
        self._late_lines = 0
        self._late_until = 0.0
        self._reading_errors = False
        self._closed = False

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

    def _open_resource(self) -> Any:
        options: dict[str, Any] = {
            "read_termination": TERMINATION,
            "write_termination": TERMINATION,
            "timeout": self.timeout_s * 1000,
            "open_timeout": int(self.timeout_s * 1000),
        }
        if self.resource_name.upper().startswith("ASRL"):
            options.update(
                baud_rate=self.baud_rate,
                data_bits=8,
                parity=visa_constants.Parity.none,
                stop_bits=visa_constants.StopBits.one,
            )
        try:
            resource = self._manager.open_resource(self.resource_name, **options)
        # PyVISA backends raise assorted types here: VisaIOError, pyserial's SerialException (an
        # OSError), ValueError for a malformed name, and pyvisa-py a plain Exception on a connect timeout.
        except Exception as exc:
            raise DeviceUnavailable(
                f"cannot open OBIS laser at {self.resource_name}: {exc}; check that the laser is powered and "
                "connected, that no other program holds the port, and that laser.resource names it"
            ) from exc
        log.info("connected to OBIS laser at %s", self.resource_name)
        return resource

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

    def _switch_handshake_on(self) -> None:
        # The reply is OK because handshaking is on after this command, whatever it was before.
        self._exchange(f"{Command.HANDSHAKE.value} {Switch.ON.value}", is_query=False)

    def _check_wavelength(self) -> None:
        difference_nm = abs(self._wavelength_nm - self._expected_wavelength_nm)
        if not difference_nm <= self._wavelength_tolerance_nm:
            raise DeviceError(
                f"OBIS laser at {self.resource_name} reports {self._wavelength_nm:g} nm, but laser.wavelength_nm "
                f"is {self._expected_wavelength_nm:g} nm (tolerance {self._wavelength_tolerance_nm:g} nm): "
                "connect the right laser or correct laser.wavelength_nm"
            )

    def close(self) -> None:
        """Release the port and leave the laser's emission as it is. Safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_resource()
            if self._owns_manager:
                self._manager.close()
            log.info("closed connection to OBIS laser at %s", self.resource_name)

    def _close_resource(self) -> None:
        resource, self._resource = self._resource, None
        if resource is None:
            return
        try:
            resource.close()
        except (pyvisa.errors.Error, OSError) as exc:
            log.warning("closing OBIS laser resource %s failed: %s", self.resource_name, exc)

    def _reconnect(self) -> None:
        """Close and reopen the resource once, then switch handshaking back on."""
        log.warning("reconnecting to OBIS laser at %s", self.resource_name)
        self._close_resource()
        try:
            self._resource = self._open_resource()
            self._late_lines = 0
            self._switch_handshake_on()
        except (DeviceError, _ConnectionLost) as exc:
            self._close_resource()
            raise DeviceDisconnected(
                f"lost the connection to OBIS laser at {self.resource_name} and could not reconnect: {exc}; "
                "check the cable or network and the laser's power"
            ) from exc
        log.info("reconnected to OBIS laser at %s", self.resource_name)

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

    # Error queue

    def read_errors(self) -> list[tuple[int, str]]:
        """Read and remove every entry of the laser's error queue, oldest first, as (code, message)."""
        errors: list[tuple[int, str]] = []
        for _ in range(MAX_QUEUED_ERRORS):
            code, message = self.query(Command.ERROR_NEXT, parse_error_entry)
            if code == ObisErrorCode.NO_ERROR:
                break
            errors.append((code, message))
        return errors

    def clear_errors(self) -> None:
        """Empty the laser's error queue."""
        self.command(Command.ERROR_CLEAR.value)

    def _raise_error_reply(self, message: str, reply: str) -> None:
        try:
            code = int(reply.removeprefix("ERR-"))
        except ValueError:
            self._resynchronise()
            raise DeviceProtocolError(
                f"OBIS laser at {self.resource_name} replied to {message!r} with the malformed error {reply!r}"
            ) from None

        details = ""
        if not self._reading_errors:
            self._reading_errors = True
            try:
                queued = self.read_errors()
                details = "; ".join(
                    entry_text if entry_code == code else f"ERR-{entry_code} {entry_text}"
                    for entry_code, entry_text in queued
                )
            except DeviceError as exc:
                log.warning("OBIS laser at %s: could not read the error queue: %s", self.resource_name, exc)
            finally:
                self._reading_errors = False

        error = DeviceError(
            f"OBIS laser at {self.resource_name} rejected {message!r} with ERR-{code} ({error_code_name(code)})"
            + (f": {details}" if details else "")
        )
        log.error("%s", error)
        raise error

    # Transactions

    def command(self, message: str) -> None:
        """Send a set command, e.g. ``"SYST:CDRH OFF"``, and consume its OK.

        Raises
        ------
        DeviceError
            If the laser replies ``ERR-<code>``. The message contains the error queue's entries.
        """
        self._transact(message, is_query=False, parse=str, repeat_on_garble=False)

    def query(self, command: Command | str, parse: Callable[[str], T] = str) -> T:
        """Send a read-only query and return its value converted by ``parse``.

        A garbled or invalid reply is queried once more, since a read-only query cannot change the
        laser. Do not send a set command through this method.
        """
        message = command.value if isinstance(command, Command) else command
        return self._transact(message, is_query=True, parse=parse, repeat_on_garble=True)

    def _transact(self, message: str, *, is_query: bool, parse: Callable[[str], T], repeat_on_garble: bool) -> T:
        with self._lock:
            if self._closed:
                raise DeviceDisconnected(f"OBIS laser at {self.resource_name} is closed; open it again")
            reconnected = False
            if self._resource is None:
                # An earlier reconnect failed, but the link may be back.
                self._reconnect()
                reconnected = True
            repeated = False
            while True:
                try:
                    reply = self._exchange(message, is_query=is_query)
                    return parse(reply) if is_query else reply  # type: ignore[return-value]
                except _ConnectionLost as exc:
                    if reconnected:
                        self._close_resource()
                        raise DeviceDisconnected(
                            f"lost the connection to OBIS laser at {self.resource_name} again while sending "
                            f"{message!r}: {exc}; check the cable or network"
                        ) from exc
                    log.warning("OBIS laser at %s: connection lost during %r (%s)", self.resource_name, message, exc)
                    self._reconnect()
                    reconnected = True
                except (DeviceProtocolError, ValueError) as exc:
                    self._resynchronise()
                    if isinstance(exc, ValueError):
                        exc = DeviceProtocolError(
                            f"OBIS laser at {self.resource_name} replied to {message!r} with an invalid value: {exc}"
                        )
                    if not repeat_on_garble or repeated:
                        log.error("%s", exc)
                        raise exc from None
                    log.warning("%s; querying once more", exc)
                    repeated = True

    def _exchange(self, message: str, *, is_query: bool) -> str:
        """Write one message, read its reply lines and return the value (OK for a set command)."""
        if self._late_lines:
            self._drain()
        if self._peer_closed():
            raise _ConnectionLost("the laser closed the connection")
        deadline = time.monotonic() + self.timeout_s
        try:
            self._resource.write(message)
        except (pyvisa.errors.VisaIOError, OSError) as exc:
            raise _ConnectionLost(str(exc)) from exc

        expected_lines = 2 if is_query else 1
        first = self._read_line(message, deadline, missing_lines=expected_lines)
        if first.startswith("ERR"):
            self._raise_error_reply(message, first)
        if not is_query:
            if first != OK:
                raise DeviceProtocolError(
                    f"OBIS laser at {self.resource_name} replied to {message!r} with {first!r} instead of {OK}"
                )
            return first
        # The first line may itself be OK, because SYST:LOCK? returns OK for a closed interlock.
        handshake = self._read_line(message, deadline, missing_lines=1)
        if handshake != OK:
            raise DeviceProtocolError(
                f"OBIS laser at {self.resource_name} replied to {message!r} with {first!r} followed by "
                f"{handshake!r} instead of {OK}"
            )
        return first

    def _read_line(self, message: str, deadline: float, *, missing_lines: int) -> str:
        """Read one reply line by ``deadline``. On a timeout, remember how many lines are still owed."""
        remaining_s = deadline - time.monotonic()
        try:
            # Past the deadline, a reply already received is still taken.
            self._resource.timeout = max(remaining_s * 1000.0, 1.0)
            # latin-1 decodes any byte, so that a garbled reply is reported here instead of by the codec.
            line = self._resource.read(encoding="latin-1")
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code != visa_constants.StatusCode.error_timeout:
                raise _ConnectionLost(str(exc)) from exc
            if self._peer_closed():
                raise _ConnectionLost("the laser closed the connection") from exc
            self._late_lines = missing_lines
            self._late_until = time.monotonic() + self.timeout_s
            raise DeviceTimeout(
                f"OBIS laser at {self.resource_name}: no reply to {message!r} within {self.timeout_s:g} s; "
                "check that the laser is on and laser.timeout_s"
            ) from exc
        except OSError as exc:
            raise _ConnectionLost(str(exc)) from exc

        if not (line.isascii() and line.isprintable()):
            raise DeviceProtocolError(f"OBIS laser at {self.resource_name} replied to {message!r} with garbled bytes {line!r}")
        return line

    def _resynchronise(self) -> None:
        log.warning("OBIS laser at %s: discarding pending input to resynchronise", self.resource_name)
        self._drain()

    def _drain(self) -> None:
        """Read and discard input until the line is quiet, for at most ``timeout_s``.

        After a timeout the reply may still come: until ``_late_lines`` lines have arrived, the
        wait lasts until one ``timeout_s`` after the timeout, instead of the short quiet period.
        NOTE: a reply later than that can still be taken for the reply to the next command, if
        it has the same shape.
        """
        if self._resource is None:
            return
        hard_deadline = time.monotonic() + self.timeout_s
        discarded = 0
        try:
            while True:
                now = time.monotonic()
                wait_s = DRAIN_QUIET_S
                if discarded < self._late_lines:
                    wait_s = max(wait_s, self._late_until - now)
                wait_s = min(wait_s, hard_deadline - now)
                if wait_s <= 0:
                    break
                self._resource.timeout = wait_s * 1000.0
                self._resource.read_raw()
                discarded += 1
        except pyvisa.errors.VisaIOError as exc:
            if exc.error_code != visa_constants.StatusCode.error_timeout:
                log.warning("OBIS laser at %s: discarding input failed: %s", self.resource_name, exc)
        except OSError as exc:
            # The next write or read reports the broken connection and reconnects.
            log.warning("OBIS laser at %s: discarding input failed: %s", self.resource_name, exc)
        if discarded:
            log.warning("OBIS laser at %s: discarded %d stale reply lines", self.resource_name, discarded)
        self._late_lines = 0

    def _peer_closed(self) -> bool:
        """Return True when a TCP socket resource has been closed by the other end.

        pyvisa-py (0.8) reports a closed socket only as a read timeout, so this looks at its socket.
        NOTE: this reads pyvisa-py's session table, which is not public API; with other backends it
        returns False and a dropped connection shows up as an OSError or a timeout.
        """
        sessions = getattr(self._manager.visalib, "sessions", None)
        session = sessions.get(self._resource.session) if isinstance(sessions, dict) else None
        interface = getattr(session, "interface", None)
        if not isinstance(interface, socket.socket):
            return False
        try:
            readable, _, _ = select.select([interface], [], [], 0)
            return bool(readable) and interface.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


def open_obis_laser(context: Any) -> ObisLaser:
    """Open the OBIS laser that ``context.config.laser`` names (entry point ``fluoscan.lasers:obis``).

    Raises
    ------
    DeviceUnavailable
        If ``laser.resource`` is not set or cannot be opened.
    """
    return ObisLaser.from_config(context.config.laser)
