"""OBIS SCPI: the command vocabulary, status and error codes, and handshaked transactions over PyVISA.

:class:`ObisConnection` sends set commands and queries, reads the ``OK`` handshake, reads the error
queue after an ``ERR-<code>`` reply, waits out late replies and reconnects once when the connection
drops. :class:`~fluoscan.drivers.obis.ObisLaser` builds on it, and :mod:`fluoscan.drivers.obis`
describes the wire protocol and the failure handling.
"""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
from collections.abc import Callable
from enum import Enum, IntEnum, IntFlag
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


class ObisConnection:
    """A handshaked SCPI connection to an OBIS laser over one PyVISA resource.

    :class:`~fluoscan.drivers.obis.ObisLaser` documents the parameters. Opening the resource is left
    to the subclass, which calls :meth:`_open_resource` once its own setup is done.
    """

    def __init__(
        self,
        resource: str,
        *,
        timeout_s: float,
        baud_rate: int,
        resource_manager: pyvisa.ResourceManager | None,
    ) -> None:
        self.resource_name = resource
        self.timeout_s = timeout_s
        self.baud_rate = baud_rate
        self._owns_manager = resource_manager is None
        self._manager = resource_manager if resource_manager is not None else pyvisa.ResourceManager("@py")
        self._resource: Any = None
        self._lock = threading.RLock()
        # Reply lines still owed after a timeout, and until when to wait for them.
        self._late_lines = 0
        self._late_until = 0.0
        self._reading_errors = False
        self._closed = False

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

    def _switch_handshake_on(self) -> None:
        # The reply is OK because handshaking is on after this command, whatever it was before.
        self._exchange(f"{Command.HANDSHAKE.value} {Switch.ON.value}", is_query=False)

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
