"""The Zaber ASCII protocol: message format, flags, rejection reasons, and a connection over pyserial.

A command is ``/<device> <axis> [<message id>] <command> [<data>][:<checksum>]`` followed by ``\\r\\n``.
A reply is one line ending in ``\\r\\n``, with fixed fields separated by single spaces::

    @01 1 05 OK IDLE -- 0:8D
    |    | |  |  |    |  | '- optional checksum
    |    | |  |  |    |  '- data ("0" when there is nothing to return, the reason for RJ)
    |    | |  |  |    '- warning flag: "--" for none, else the highest-priority flag
    |    | |  |  '- BUSY while the axis moves (a stop still in progress counts), else IDLE
    |    | |  '- OK (accepted) or RJ (rejected)
    |    | '- message id, only when the command carried one
    |    '- axis (0 is the whole device)
    '- "@" for a reply, "#" for an info line, "!" for an alert; then the 2-digit device address

The checksum is the two's complement of the byte sum of everything between the leading ``/`` or ``@``
and the colon, as two upper-case hex digits: ``/1 0 move abs 10000:41``, ``@01 0 OK IDLE -- 0:8D``.

:class:`ZaberConnection` sends one command at a time and returns its reply. It leaves the meaning of
the reply (OK or RJ, warning flags) to the device driver.
"""

from __future__ import annotations

import errno
import itertools
import logging
import re
import threading
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any

import serial

from fluoscan.drivers.errors import DeviceDisconnected, DeviceProtocolError, DeviceTimeout, DeviceUnavailable

log = logging.getLogger(__name__)

# pyserial's own read timeout. Reads loop in slices this long until the request's deadline.
_READ_SLICE_S = 0.02
# A line longer than this without a terminator is noise, not a reply.
_MAX_LINE_BYTES = 1024
# After a garbled reply, input must stay quiet this long before the connection counts as resynchronised.
_QUIET_S = 0.05


class MessageType(str, Enum):
    """The first character of a line sent by a Zaber device."""

    REPLY = "@"
    INFO = "#"
    ALERT = "!"


# Rejection reasons, the data field of an RJ reply.
REJECTION_REASONS = {
    "AGAIN": "the device cannot process the command now; send it again",
    "BADAXIS": "the device has no such axis",
    "BADCOMMAND": "the device does not support this command or setting",
    "BADDATA": "the value is invalid or out of range",
    "BADMESSAGEID": "the message id is not a number from 0 to 99",
    "DEVICEONLY": "the command applies to the whole device, not to one axis",
    "FULL": "the device's command buffer is full",
    "LOCKSTEP": "the axis is part of a lockstep group",
    "NOACCESS": "the command needs a higher access level",
    "PARKED": "the axis is parked; unpark it first",
    "STATUSBUSY": "the device is busy",
}

# Warning flags, highest priority first. Faults start with F, warnings with W, notices with N.
WARNING_FLAGS = {
    "FF": "critical system error",
    "FN": "peripheral not supported",
    "FZ": "peripheral inactive",
    "FH": "hardware emergency stop",
    "FV": "supply voltage out of range",
    "FO": "driver disabled",
    "FC": "current inrush",
    "FM": "motor temperature error",
    "FD": "driver disabled",
    "FQ": "encoder error",
    "FI": "index error",
    "FA": "analog encoder sync error",
    "FR": "overdrive limit exceeded",
    "FS": "stalled and stopped",
    "FB": "stream bounds error",
    "FP": "interpolated path deviation",
    "FE": "limit error",
    "FT": "excessive twist",
    "WL": "unexpected limit trigger",
    "WV": "voltage out of range",
    "WT": "controller temperature high",
    "WS": "stalled, with recovery",
    "WM": "displaced when stationary",
    "WP": "invalid calibration type",
    "WR": "no reference position: the axis is not homed",
    "WH": "device not homed",
    "NC": "manual control",
    "NI": "movement interrupted",
    "ND": "stream discontinuity",
    "NR": "value rounded",
    "NT": "value truncated",
    "NU": "setting update pending",
    "NJ": "joystick calibrating",
    "NB": "firmware update mode",
}

NO_WARNING = "--"
UNHOMED_FLAGS = frozenset({"WR", "WH"})

_REPLY_PATTERN = re.compile(
    r"^@(?P<device>\d{2}) (?P<axis>\d+) (?:(?P<message_id>\d{1,2}) )?"
    r"(?P<status>OK|RJ) (?P<state>BUSY|IDLE) (?P<flag>--|[A-Z]{2})(?: (?P<data>[^:]*))?"
    r"(?::(?P<checksum>[0-9A-F]{2}))?$"
)


class ReplyFormatError(ValueError):
    """A line from the device does not have the fields of a Zaber ASCII reply, or its checksum is wrong."""


@dataclass(frozen=True)
class Reply:
    """One ``@`` reply line, split into its fields."""

    device: int
    axis: int
    message_id: int | None
    accepted: bool
    busy: bool
    warning_flag: str
    data: str

    @property
    def is_fault(self) -> bool:
        return self.warning_flag.startswith("F")

    @property
    def reason(self) -> str:
        """The rejection reason of an RJ reply, e.g. BADDATA; empty for an accepted reply."""
        return "" if self.accepted else self.data


def checksum(text: str) -> str:
    """Return the 2-digit hex checksum of ``text``, the message without its leading ``/`` or ``@``."""
    total = sum(text.encode("ascii"))
    return f"{-total & 0xFF:02X}"


def format_command(
    device: int,
    axis: int,
    command: str,
    *,
    message_id: int | None = None,
    with_checksum: bool = False,
) -> bytes:
    """Encode one command line, e.g. ``format_command(1, 1, "move abs 1000")`` gives ``b"/1 1 move abs 1000\\r\\n"``."""
    fields = [str(device), str(axis)]
    if message_id is not None:
        if not 0 <= message_id <= 99:
            raise ValueError(f"Zaber message ids are 0 to 99, got {message_id}")
        fields.append(f"{message_id:02d}")
    if command:
        fields.append(command)
    body = " ".join(fields)
    if with_checksum:
        body = f"{body}:{checksum(body)}"
    return f"/{body}\r\n".encode("ascii")


def parse_reply(line: str) -> Reply:
    """Split an ``@`` reply line (without its terminator) into its fields.

    Raises
    ------
    ReplyFormatError
        If the line does not have the reply fields, or carries a checksum that does not match.
    """
    match = _REPLY_PATTERN.match(line)
    if match is None:
        raise ReplyFormatError(f"not a Zaber reply: {line!r}")

    sent_checksum = match["checksum"]
    if sent_checksum is not None:
        expected = checksum(line[1 : line.rindex(":")])
        if sent_checksum != expected:
            raise ReplyFormatError(f"checksum {sent_checksum} of {line!r} does not match the computed {expected}")

    message_id = match["message_id"]
    return Reply(
        device=int(match["device"]),
        axis=int(match["axis"]),
        message_id=None if message_id is None else int(message_id),
        accepted=match["status"] == "OK",
        busy=match["state"] == "BUSY",
        warning_flag=match["flag"],
        data=(match["data"] or "").strip(),
    )


def parse_warnings(data: str) -> list[str]:
    """Return the flags listed in the data of a ``warnings`` reply, e.g. ``"02 FS NI"`` gives ``["FS", "NI"]``.

    Raises
    ------
    ReplyFormatError
        If the count does not match the number of flags that follow it.
    """
    fields = data.split()
    if not fields or not fields[0].isdigit():
        raise ReplyFormatError(f"a warnings reply starts with the number of flags, got {data!r}")
    count, flags = int(fields[0]), fields[1:]
    if count != len(flags) or not all(re.fullmatch(r"[A-Z]{2}", flag) for flag in flags):
        raise ReplyFormatError(f"a warnings reply lists {count} two-letter flags, got {data!r}")
    return flags


def describe_flag(flag: str) -> str:
    """Return ``"FS (stalled and stopped)"`` style text for a warning flag."""
    return f"{flag} ({WARNING_FLAGS.get(flag, 'unknown flag')})"


def describe_reason(reason: str) -> str:
    """Return ``"BADDATA (the value is invalid or out of range)"`` style text for a rejection reason."""
    return f"{reason} ({REJECTION_REASONS.get(reason, 'unknown reason')})"


@dataclass(frozen=True)
class ReconnectCheck:
    """A query whose reply data must not change across a reconnect, e.g. ``get system.serial``."""

    device: int
    command: str
    expected_data: str


class _TransportLost(Exception):
    """The serial port failed under a read or write (cable pulled, pty hung up, socket closed)."""


class _GarbledReply(Exception):
    """A line that is neither a valid reply nor an info or alert line."""


class ZaberConnection:
    """A serial port (or pyserial URL) that carries Zaber ASCII commands, one request at a time.

    Each request waits for its own reply. Replies are matched by device, axis and message id, and
    lines that belong to an earlier request (a reply that came after its timeout) are dropped.
    Info lines (``#``) and alerts (``!``) are logged and skipped.

    Failures raise the fluoscan device errors:

    - no reply within ``timeout_s``: DeviceTimeout;
    - a garbled line or a wrong checksum: the input is drained until quiet, then DeviceProtocolError,
      except that a request marked ``read_only`` is sent once more first;
    - a failing port: it is reopened once, trying until ``timeout_s`` has passed. If
      :attr:`reconnect_check` is set, its query must then return the same data, so that a port that
      now leads to another device is not used. The request is sent again; DeviceDisconnected if any
      of this fails. A reconnect takes at most twice ``timeout_s``.

    Parameters
    ----------
    port
        Serial port (``/dev/ttyUSB0``, ``COM3``) or pyserial URL (``socket://host:port``).
    baud_rate
        Serial baud rate; Zaber's ASCII default is 115200. Ignored by ``socket://``.
    timeout_s
        Time allowed for each reply, and for reopening a lost port, in s.
    checksums
        Append a checksum to every command. Reply checksums are checked whenever present.
    message_ids
        Number every command (0-99, cycling).
    name
        Name used in log lines and error messages.
    """

    def __init__(
        self,
        port: str,
        *,
        baud_rate: int = 115200,
        timeout_s: float = 2.0,
        checksums: bool = False,
        message_ids: bool = True,
        name: str = "zaber",
    ) -> None:
        self.port = port
        self.baud_rate = baud_rate
        self.timeout_s = timeout_s
        self.checksums = checksums
        self.message_ids = message_ids
        self.name = name
        self.alert_count = 0
        self.reconnect_check: ReconnectCheck | None = None
        self._lock = threading.RLock()
        self._ids = itertools.cycle(range(100))
        self._buffer = bytearray()
        self._serial: Any = None

    @property
    def is_open(self) -> bool:
        return self._serial is not None

    def open(self) -> None:
        """Open the port; raise DeviceUnavailable, naming the port and what to check, if it cannot be opened."""
        try:
            self._serial = self._connect()
        except (serial.SerialException, OSError, ValueError) as exc:
            if getattr(exc, "errno", None) in (errno.EACCES, errno.EPERM):
                advice = "your user may not open it; on Linux add the user to the dialout group and log in again"
            else:
                advice = (
                    "check that the device is powered and plugged in, that the port exists "
                    "(ls /dev/ttyUSB* /dev/serial/by-id on Linux), that no other program has it open, "
                    "and that your user may open it (on Linux: a member of the dialout group)"
                )
            raise DeviceUnavailable(f"{self.name}: cannot open serial port {self.port!r}: {exc}; {advice}") from exc
        log.info("%s: opened %s at %d baud", self.name, self.port, self.baud_rate)
        self._discard_input()

    def close(self) -> None:
        """Close the port; safe to call twice."""
        with self._lock:
            if self._serial is None:
                return
            try:
                self._serial.close()
            except (serial.SerialException, OSError) as exc:
                log.warning("%s: closing %s failed: %s", self.name, self.port, exc)
            self._serial = None
            log.info("%s: closed %s", self.name, self.port)

    def request(self, device: int, axis: int, command: str, *, read_only: bool = False) -> Reply:
        """Send ``command`` to ``device`` and ``axis`` and return its reply, accepted or rejected.

        ``read_only`` marks a command that changes nothing on the device, so that it may be sent
        again after a garbled reply. Any command may be sent again after a reconnect, so callers send
        only commands that are safe to repeat (absolute moves, home, stop, queries).
        """
        label = command or "status poll"
        with self._lock:
            if self._serial is None:
                raise DeviceDisconnected(f"{self.name}: cannot send {label!r}: the port {self.port} is closed")
            garbled_once = reconnected = False
            while True:
                try:
                    reply = self._exchange(device, axis, command)
                except _TransportLost as exc:
                    if reconnected:
                        raise DeviceDisconnected(
                            f"{self.name}: lost {self.port} again after reconnecting, during {label!r}: {exc}"
                        ) from exc
                    self._reconnect(label, exc)
                    reconnected = True
                    continue
                except _GarbledReply as exc:
                    self._discard_input(quiet_s=_QUIET_S)
                    if read_only and not garbled_once:
                        log.warning("%s: garbled reply to %r (%s); sending it again", self.name, label, exc)
                        garbled_once = True
                        continue
                    raise DeviceProtocolError(f"{self.name}: garbled reply to {label!r} from {self.port}: {exc}") from exc
                if reply is None:
                    raise DeviceTimeout(
                        f"{self.name}: no reply to {label!r} within {self.timeout_s:g} s on {self.port}; "
                        "check that the device is powered and connected"
                    )
                return reply

    def _connect(self) -> Any:
        # An exclusive lock (flock) keeps a second program off a local port; URLs have no such lock.
        return serial.serial_for_url(
            self.port,
            baudrate=self.baud_rate,
            timeout=_READ_SLICE_S,
            write_timeout=self.timeout_s,
            exclusive=True if "://" not in self.port else None,
        )

    def _exchange(self, device: int, axis: int, command: str) -> Reply | None:
        """Write one command and read lines until its reply; return None at the deadline."""
        message_id = next(self._ids) if self.message_ids else None
        line = format_command(device, axis, command, message_id=message_id, with_checksum=self.checksums)
        self._discard_input()
        try:
            self._serial.write(line)
        except (serial.SerialException, OSError) as exc:
            raise _TransportLost(str(exc)) from exc
        log.debug("%s: sent %r", self.name, line)

        deadline = time.monotonic() + self.timeout_s
        while (text := self._read_line(deadline)) is not None:
            reply = self._classify(text)
            if reply is None:
                continue
            if (reply.device, reply.axis, reply.message_id) == (device, axis, message_id):
                return reply
            log.debug("%s: dropped a reply that belongs to another request: %r", self.name, text)
        return None

    def _classify(self, text: str) -> Reply | None:
        """Parse a reply line; log and skip info lines, alerts and blank lines."""
        if not text:
            return None
        if text.startswith(MessageType.INFO.value):
            log.debug("%s: info line %r", self.name, text)
            return None
        if text.startswith(MessageType.ALERT.value):
            self.alert_count += 1
            level = logging.INFO if self.alert_count == 1 else logging.DEBUG
            log.log(level, "%s: alert %r (%d alerts so far)", self.name, text, self.alert_count)
            return None
        try:
            return parse_reply(text)
        except ReplyFormatError as exc:
            raise _GarbledReply(str(exc)) from exc

    def _read_line(self, deadline: float) -> str | None:
        """Return the next line without its terminator, or None if none is complete by ``deadline``."""
        while True:
            end = self._buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self._buffer[:end]).rstrip(b"\r")
                del self._buffer[: end + 1]
                try:
                    return raw.decode("ascii")
                except UnicodeDecodeError as exc:
                    raise _GarbledReply(f"non-ASCII bytes in {raw!r}") from exc
            if len(self._buffer) > _MAX_LINE_BYTES:
                raise _GarbledReply(f"{len(self._buffer)} bytes without a line terminator")
            if time.monotonic() >= deadline:
                return None
            try:
                chunk = self._serial.read(max(1, self._serial.in_waiting))
            except (serial.SerialException, OSError) as exc:
                raise _TransportLost(str(exc)) from exc
            self._buffer.extend(chunk)

    def _discard_input(self, *, quiet_s: float = 0.0) -> None:
        """Drop buffered and pending input; with ``quiet_s``, also what arrives until the line is quiet that long."""
        dropped = bytearray(self._buffer)
        self._buffer.clear()
        deadline = time.monotonic() + self.timeout_s
        quiet_until = time.monotonic() + quiet_s
        try:
            while time.monotonic() < deadline:
                waiting = self._serial.in_waiting
                if waiting:
                    chunk = self._serial.read(waiting)
                elif quiet_s > 0:
                    chunk = self._serial.read(1)  # blocks for at most _READ_SLICE_S
                else:
                    break
                if chunk:
                    dropped.extend(chunk)
                    quiet_until = time.monotonic() + quiet_s
                elif time.monotonic() >= quiet_until:
                    break
        except (serial.SerialException, OSError) as exc:
            # A lost port shows up again, and is handled, at the next write or read.
            log.debug("%s: reading stale input failed: %s", self.name, exc)
        if dropped:
            log.debug("%s: dropped stale input %r", self.name, bytes(dropped))

    def _reconnect(self, label: str, cause: Exception) -> None:
        """Close and reopen the port, trying until ``timeout_s`` has passed; raise DeviceDisconnected if it stays away."""
        log.warning("%s: lost %s during %r (%s); reconnecting", self.name, self.port, label, cause)
        try:
            self._serial.close()
        except (serial.SerialException, OSError) as exc:
            log.debug("%s: closing the lost port failed: %s", self.name, exc)
        self._serial = None
        self._buffer.clear()
        deadline = time.monotonic() + self.timeout_s
        last_error: Exception = cause
        while time.monotonic() < deadline:
            try:
                self._serial = self._connect()
            except (serial.SerialException, OSError) as exc:
                last_error = exc
                time.sleep(0.05)
                continue
            self._check_same_device(label)
            log.warning("%s: reconnected to %s; sending %r again", self.name, self.port, label)
            return
        raise DeviceDisconnected(
            f"{self.name}: lost the connection to {self.port} during {label!r} and could not reopen it within "
            f"{self.timeout_s:g} s ({last_error}); check the cable and the device's power, then open it again"
        ) from cause

    def _check_same_device(self, label: str) -> None:
        """Raise DeviceDisconnected unless the reopened port returns the same data for :attr:`reconnect_check`."""
        check = self.reconnect_check
        if check is None:
            return
        try:
            reply = self._exchange(check.device, 0, check.command)
        except (_TransportLost, _GarbledReply) as exc:
            found = f"failed: {exc}"
        else:
            if reply is not None and reply.accepted and reply.data == check.expected_data:
                return
            found = "got no reply" if reply is None else f"got {reply.data!r}"
        self.close()
        raise DeviceDisconnected(
            f"{self.name}: reopened {self.port} after losing it during {label!r}, but {check.command!r} "
            f"{found} instead of {check.expected_data!r}; the port may now lead to another device. "
            "Check the cabling, then open the device again"
        )
