"""Zaber translation stage over the Zaber ASCII protocol (pyserial).

One :class:`ZaberStage` drives one axis of one device on a serial port or a pyserial URL such as
``socket://127.0.0.1:5000``. Positions are microsteps on the wire and millimetres in this API. The
wire format and the request/reply handling (timeouts, resynchronisation, one reconnect) live in
:mod:`fluoscan.drivers.zaber_ascii`.

Errors, all :class:`~fluoscan.drivers.DeviceError`:

- a rejected command (RJ) raises :class:`CommandRejected` with the reason, e.g. BADDATA;
- a fault flag (F*) in any reply raises DeviceError. The fault stays latched on the device until
  :meth:`ZaberStage.clear_warnings` is called;
- no reply within ``timeout_s``, or a move or homing still BUSY after ``move_timeout_s``, raises
  DeviceTimeout. A timed-out move is stopped first;
- a garbled reply raises DeviceProtocolError, except that read-only queries are sent once more;
- a vanished port is reopened once, within ``timeout_s``. The request is sent again if the device
  there reports the serial number read at open; otherwise DeviceDisconnected.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from types import TracebackType
from typing import TYPE_CHECKING

from fluoscan.drivers.errors import DeviceError, DeviceProtocolError, DeviceTimeout, DeviceUnavailable
from fluoscan.drivers.zaber_ascii import (
    NO_WARNING,
    UNHOMED_FLAGS,
    ReconnectCheck,
    Reply,
    ReplyFormatError,
    ZaberConnection,
    describe_flag,
    describe_reason,
    parse_warnings,
)

if TYPE_CHECKING:
    from fluoscan.acquisition.config import StageConfig
    from fluoscan.acquisition.devices import DeviceContext

log = logging.getLogger(__name__)


class CommandRejected(DeviceError):
    """The stage replied RJ to a command; ``reason`` is the rejection reason, e.g. BADDATA."""

    def __init__(self, message: str, *, command: str, reason: str, warning_flag: str) -> None:
        super().__init__(message)
        self.command = command
        self.reason = reason
        self.warning_flag = warning_flag


class ZaberStage:
    """One axis of a Zaber device, implementing the :class:`~fluoscan.drivers.Stage` Protocol.

    The port opens in ``__init__``, which reads the identity, the device's travel limits and its
    warning flags. Homing is left to the caller (see :meth:`is_homed` and :meth:`home`).

    Parameters
    ----------
    port
        Serial port (``/dev/ttyUSB0``, ``COM3``) or pyserial URL (``socket://host:port``).
    microstep_mm
        Length of one microstep, in mm, from the stage's data sheet.
    baud_rate
        Serial baud rate; Zaber's ASCII default is 115200.
    device_address, axis
        Device number on the daisy chain (1-99) and axis number on that device (1-9).
    limits_mm
        Soft travel limits ``(min, max)`` in mm, intersected with the device's ``limit.min`` and
        ``limit.max``; None uses the device's limits alone.
    timeout_s
        Time allowed for each reply, in s.
    move_timeout_s
        Time allowed for one move or homing to end, in s.
    poll_interval_s
        Pause between status polls while the axis is BUSY, in s.
    position_tolerance_mm
        Largest accepted difference between a move's target and the position read back, in mm.
    checksums
        Append a checksum to every command. Checksums on replies are checked whenever present (the
        device adds them only when its ``comm.checksum`` setting is 1).
    message_ids
        Number every command (0-99) so that a late reply to an earlier command can be recognised.
    name
        Name used in log lines and error messages.
    """

    def __init__(
        self,
        port: str,
        *,
        microstep_mm: float,
        baud_rate: int = 115200,
        device_address: int = 1,
        axis: int = 1,
        limits_mm: tuple[float, float] | None = None,
        timeout_s: float = 2.0,
        move_timeout_s: float = 60.0,
        poll_interval_s: float = 0.002,
        position_tolerance_mm: float = 0.001,
        checksums: bool = False,
        message_ids: bool = True,
        name: str = "stage",
    ) -> None:
        if not microstep_mm > 0:
            raise ValueError(f"microstep_mm must be positive, got {microstep_mm}")
        if limits_mm is not None and not limits_mm[0] < limits_mm[1]:
            raise ValueError(f"limits_mm must be (min, max) with min < max, got {limits_mm}")
        self.microstep_mm = microstep_mm
        self.device_address = device_address
        self.axis = axis
        self.move_timeout_s = move_timeout_s
        self.poll_interval_s = poll_interval_s
        self.position_tolerance_mm = position_tolerance_mm
        self.name = name
        self._soft_limits_mm = limits_mm
        self._identity = ""
        self._device_limits_steps = (0, 0)
        self._limits_mm = (0.0, 0.0)
        self._warning_counts: Counter[str] = Counter()
        self._connection = ZaberConnection(
            port,
            baud_rate=baud_rate,
            timeout_s=timeout_s,
            checksums=checksums,
            message_ids=message_ids,
            name=name,
        )

        self._connection.open()
        try:
            self._initialise()
        except BaseException:
            self.close()
            raise

    # -- Stage Protocol ------------------------------------------------------------------------

    def identity(self) -> str:
        return self._identity

    def is_homed(self) -> bool:
        """Return True when the axis has a reference position (``limit.home.triggered`` is 1 and no WR/WH flag)."""
        try:
            reply = self._request("get limit.home.triggered", read_only=True)
        except CommandRejected as exc:
            if exc.reason != "BADCOMMAND":
                raise
            # Some products lack the setting; the WR/WH flag of a status poll still shows whether the axis is homed.
            reply = self._request("", read_only=True)
            return reply.warning_flag not in UNHOMED_FLAGS
        return reply.data.split()[:1] == ["1"] and reply.warning_flag not in UNHOMED_FLAGS

    def home(self) -> None:
        log.info("%s: homing", self.name)
        self._request("home")
        self._wait_until_idle("home", self.move_timeout_s)
        if not self.is_homed():
            raise DeviceError(
                f"{self.name}: homing ended but the stage still reports no reference position; "
                "check the home sensor and cabling, then home again"
            )
        log.info("%s: homed at %.4f mm", self.name, self.position_mm())

    def limits_mm(self) -> tuple[float, float]:
        return self._limits_mm

    def device_limits_mm(self) -> tuple[float, float]:
        """Return the device's own travel range (``limit.min``, ``limit.max``), in mm."""
        low, high = self._device_limits_steps
        return low * self.microstep_mm, high * self.microstep_mm

    def move_to(self, position_mm: float) -> float:
        target_steps = self._target_microsteps(position_mm)
        command = f"move abs {target_steps}"
        log.debug("%s: moving to %.4f mm (%d microsteps)", self.name, position_mm, target_steps)
        try:
            self._request(command)
        except CommandRejected as exc:
            if exc.warning_flag in UNHOMED_FLAGS:
                raise DeviceError(
                    f"{self.name}: the stage rejected {command!r} ({exc.reason}) while it is not homed "
                    f"({describe_flag(exc.warning_flag)}); home it first, or set stage.homing = \"home\" "
                    "so that the scan homes it"
                ) from exc
            raise
        self._wait_until_idle(command, self.move_timeout_s)

        reached_mm = self.position_mm()
        target_mm = target_steps * self.microstep_mm
        if abs(reached_mm - target_mm) > self.position_tolerance_mm:
            raise DeviceError(
                f"{self.name}: move to {target_mm:.4f} mm ended at {reached_mm:.4f} mm, more than "
                f"{self.position_tolerance_mm:g} mm away; the move was interrupted or the stage slipped "
                f"(warning flags: {', '.join(self.warnings()) or 'none'})"
            )
        return reached_mm

    def position_mm(self) -> float:
        reply = self._request("get pos", read_only=True)
        return self._parse_integer(reply, "get pos") * self.microstep_mm

    def stop(self) -> None:
        """Decelerate to a stop and wait until the axis is idle."""
        log.info("%s: stopping", self.name)
        self._request("stop")
        self._wait_until_idle("stop", self.timeout_s, stop_on_timeout=False)

    # -- warning flags ---------------------------------------------------------------------------

    def warnings(self) -> list[str]:
        """Return every warning flag active on the axis, highest priority first."""
        reply = self._request("warnings", read_only=True, check_faults=False)
        return self._parse_warning_list(reply)

    def clear_warnings(self) -> list[str]:
        """Clear the latched warning flags and return the ones that were active.

        WR (no reference position) is not latched: it stays until the axis is homed.
        """
        reply = self._request("warnings clear", check_faults=False)
        flags = self._parse_warning_list(reply)
        self._warning_counts.clear()
        log.info("%s: cleared warning flags %s", self.name, ", ".join(flags) or "(none were active)")
        return flags

    @property
    def warning_counts(self) -> dict[str, int]:
        """Number of replies that carried each warning flag since the stage opened or was last cleared."""
        return dict(self._warning_counts)

    # -- lifetime --------------------------------------------------------------------------------

    @property
    def port(self) -> str:
        return self._connection.port

    @property
    def baud_rate(self) -> int:
        return self._connection.baud_rate

    @property
    def timeout_s(self) -> float:
        return self._connection.timeout_s

    @property
    def is_open(self) -> bool:
        return self._connection.is_open

    def close(self) -> None:
        """Close the port; safe to call twice. The stage is not stopped: call :meth:`stop` first if it may be moving."""
        self._connection.close()

    def __enter__(self) -> ZaberStage:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ZaberStage({self.port!r}, device_address={self.device_address}, axis={self.axis})"

    # -- opening -------------------------------------------------------------------------------

    def _initialise(self) -> None:
        try:
            self._request("", axis=0, read_only=True)
        except DeviceTimeout as exc:
            raise DeviceTimeout(
                f"{exc}. Is device {self.device_address} on {self.port}, at {self.baud_rate} baud, in the ASCII "
                "protocol? Check stage.device_address and stage.baud_rate"
            ) from exc

        device_id = self._read_identity_setting("deviceid")
        serial_number = self._read_identity_setting("system.serial")
        firmware = self._read_identity_setting("version")
        self._identity = (
            f"Zaber device ID {device_id}, serial {serial_number}, firmware {firmware} "
            f"(address {self.device_address}, axis {self.axis})"
        )
        log.info("%s: connected to %s on %s", self.name, self._identity, self.port)
        for setting, value in (("system.serial", serial_number), ("deviceid", device_id)):
            if value != "unknown":
                self._connection.reconnect_check = ReconnectCheck(self.device_address, f"get {setting}", value)
                break

        low = self._parse_integer(self._request("get limit.min", read_only=True), "get limit.min")
        high = self._parse_integer(self._request("get limit.max", read_only=True), "get limit.max")
        self._device_limits_steps = (low, high)
        self._limits_mm = self._combine_limits()

        flags = self.warnings()
        faults = [flag for flag in flags if flag.startswith("F")]
        if faults:
            raise DeviceError(
                f"{self.name}: the stage reports {', '.join(describe_flag(flag) for flag in faults)}; "
                "find and remove the cause, then clear the flags with ZaberStage.clear_warnings() "
                "(the command 'warnings clear')"
            )
        if flags and all(flag.startswith("N") for flag in flags):
            # Notices such as NI (movement interrupted) describe earlier sessions; they carry no state.
            self.clear_warnings()
            return
        level = logging.INFO if set(flags) <= UNHOMED_FLAGS else logging.WARNING
        if flags:
            log.log(level, "%s: active warning flags: %s", self.name, ", ".join(describe_flag(f) for f in flags))

    def _read_identity_setting(self, setting: str) -> str:
        try:
            return self._request(f"get {setting}", axis=0, read_only=True).data
        except CommandRejected as exc:
            if exc.reason != "BADCOMMAND":
                raise
            log.info("%s: the device does not support 'get %s'", self.name, setting)
            return "unknown"

    def _combine_limits(self) -> tuple[float, float]:
        low, high = self.device_limits_mm()
        if self._soft_limits_mm is not None:
            low, high = max(low, self._soft_limits_mm[0]), min(high, self._soft_limits_mm[1])
        if not low < high:
            raise DeviceError(
                f"{self.name}: stage.limits_mm {list(self._soft_limits_mm or ())} do not overlap the device's travel "
                f"range {self.device_limits_mm()[0]:g}..{self.device_limits_mm()[1]:g} mm (limit.min, limit.max); "
                "change stage.limits_mm, or check stage.microstep_mm"
            )
        log.info("%s: travel limits %.4f..%.4f mm", self.name, low, high)
        return low, high

    # -- moves -------------------------------------------------------------------------------------

    def _target_microsteps(self, position_mm: float) -> int:
        """Return the microstep target of a move, after checking it against the limits (nothing is sent)."""
        low, high = self._limits_mm
        # Half a microstep of slack, so that a raster computed in floating point can touch a limit.
        slack_mm = self.microstep_mm / 2
        if not math.isfinite(position_mm) or not low - slack_mm <= position_mm <= high + slack_mm:
            soft = "not set" if self._soft_limits_mm is None else f"{list(self._soft_limits_mm)} mm"
            device_low, device_high = self.device_limits_mm()
            raise DeviceError(
                f"{self.name}: position {position_mm:g} mm is outside the travel limits {low:g}..{high:g} mm "
                f"(stage.limits_mm {soft}; device limit.min..limit.max {device_low:g}..{device_high:g} mm); "
                "change the scan positions (scan.y_start_mm, scan.step_mm, scan.n_lines) or stage.limits_mm"
            )
        steps = round(position_mm / self.microstep_mm)
        low_steps, high_steps = math.ceil(low / self.microstep_mm - 1e-9), math.floor(high / self.microstep_mm + 1e-9)
        return min(max(steps, low_steps), high_steps)

    def _wait_until_idle(self, command: str, timeout_s: float, *, stop_on_timeout: bool = True) -> None:
        """Poll the axis until it reports IDLE; after ``timeout_s``, stop it and raise DeviceTimeout."""
        deadline = time.monotonic() + timeout_s
        while True:
            reply = self._request("", read_only=True)
            if not reply.busy:
                return
            if time.monotonic() >= deadline:
                break
            time.sleep(min(self.poll_interval_s, max(0.0, deadline - time.monotonic())))

        stopped = ""
        if stop_on_timeout:
            try:
                self._request("stop")
                stopped = "; sent stop"
            except DeviceError as exc:
                stopped = f"; stop failed too: {exc}"
        advice = "raise stage.move_timeout_s for long moves" if stop_on_timeout else "check the stage"
        raise DeviceTimeout(
            f"{self.name}: {command!r} was still BUSY after {timeout_s:g} s{stopped}; check that nothing blocks "
            f"the stage, or {advice}"
        )

    # -- requests ------------------------------------------------------------------------------

    def _request(
        self,
        command: str,
        *,
        axis: int | None = None,
        read_only: bool = False,
        check_faults: bool = True,
    ) -> Reply:
        """Send one command to the stage's device and axis and return its accepted reply.

        Raises CommandRejected for RJ and, unless ``check_faults`` is False, DeviceError for a fault flag.
        """
        axis = self.axis if axis is None else axis
        reply = self._connection.request(self.device_address, axis, command, read_only=read_only)
        label = command or "status poll"
        if not reply.accepted:
            raise CommandRejected(
                f"{self.name}: the stage rejected {label!r}: {describe_reason(reply.reason)}",
                command=command,
                reason=reply.reason,
                warning_flag=reply.warning_flag,
            )
        self._note_flag(reply, label, check_faults)
        return reply

    # -- reply contents ------------------------------------------------------------------------

    def _note_flag(self, reply: Reply, label: str, check_faults: bool) -> None:
        """Raise on a fault flag; count and log other flags, once per flag at WARNING level."""
        flag = reply.warning_flag
        if flag == NO_WARNING:
            return
        if reply.is_fault and check_faults:
            raise DeviceError(
                f"{self.name}: the stage reports fault {describe_flag(flag)} in its reply to {label!r}; find and "
                "remove the cause, then clear it with ZaberStage.clear_warnings() (the command 'warnings clear')"
            )
        self._warning_counts[flag] += 1
        count = self._warning_counts[flag]
        if flag in UNHOMED_FLAGS:
            level = logging.INFO if count == 1 else logging.DEBUG
        else:
            level = logging.WARNING if count == 1 else logging.DEBUG
        log.log(level, "%s: warning flag %s in reply to %r (%d replies with it so far)", self.name, describe_flag(flag), label, count)

    def _parse_warning_list(self, reply: Reply) -> list[str]:
        try:
            return parse_warnings(reply.data)
        except ReplyFormatError as exc:
            raise DeviceProtocolError(f"{self.name}: unexpected reply to 'warnings': {exc}") from exc

    def _parse_integer(self, reply: Reply, label: str) -> int:
        fields = reply.data.split()
        try:
            return int(fields[0])
        except (IndexError, ValueError) as exc:
            raise DeviceProtocolError(f"{self.name}: expected an integer in the reply to {label!r}, got {reply.data!r}") from exc


def stage_from_config(config: StageConfig, *, port: str | None = None) -> ZaberStage:
    """Open a :class:`ZaberStage` with the settings of a ``[stage]`` configuration section.

    ``port`` replaces ``config.port``, e.g. with a simulator's pseudo-terminal.
    """
    port = port or config.port
    if port is None:
        raise DeviceUnavailable(
            'stage.port is not set: set it to the stage\'s serial port, e.g. "/dev/ttyUSB0" or "COM3"'
        )
    return ZaberStage(
        port,
        microstep_mm=config.microstep_mm,
        baud_rate=config.baud_rate,
        device_address=config.device_address,
        axis=config.axis,
        limits_mm=config.limits_mm,
        timeout_s=config.timeout_s,
        move_timeout_s=config.move_timeout_s,
        checksums=config.checksums,
    )


def open_zaber_stage(context: DeviceContext) -> ZaberStage:
    """Open the stage that ``context.config.stage`` names (entry point ``zaber`` of ``fluoscan.stages``)."""
    return stage_from_config(context.config.stage)
