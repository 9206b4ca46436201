"""A simulated Zaber device with one motorised axis: what it replies to each Zaber ASCII command.

This module contains the device's state and its replies, with no I/O; :mod:`fluoscan.simulators.stage`
serves it on a pseudo-terminal. Positions are in microsteps, as on the wire. Moves follow a
trapezoidal velocity profile (accelerate, cruise, decelerate) whose duration is scaled by
``time_scale`` (0: every move ends at once; 1: real time). The device starts without a reference
position (flag WR) until it is homed.

Rejections follow the documented meaning of each Zaber reason:

- ``RJ IDLE -- BADCOMMAND`` for an unknown command or setting;
- ``BADDATA`` for a value that is not a number, or a target outside ``limit.min``..``limit.max``;
- ``BADAXIS`` for an axis the device lacks;
- ``DEVICEONLY`` for a device setting addressed to an axis.

The reply to ``warnings`` is the number of flags (two digits) followed by the flags.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

# Firmware speed and acceleration units: maxspeed data = microsteps/s x 1.6384 (A-series speed conversion).
_SPEED_UNIT = 1.6384
# NOTE: accel data = microsteps/s² x 1.6384 / 10 is the A-series conversion; not checked against FW7.
_ACCEL_UNIT = 1.6384 / 10

# Warning flags the model can raise, highest priority first (faults, warnings, notices).
FLAG_PRIORITY = (
    "FF FN FZ FH FV FO FC FM FD FQ FI FA FR FS FB FP FE FT WL WV WT WS WM WP WR WH NC NI ND NR NT NU NJ NB".split()
)

_DEVICE_SETTINGS = frozenset({"deviceid", "system.serial", "version", "comm.checksum", "system.axiscount"})
_AXIS_SETTINGS = frozenset(
    {"pos", "limit.min", "limit.max", "limit.home.triggered", "maxspeed", "accel", "resolution"}
)
_WRITABLE_SETTINGS = frozenset({"maxspeed", "accel", "comm.checksum"})
_INTEGER = re.compile(r"^[+-]?\d+$")


def checksum(text: str) -> str:
    """Return the Zaber checksum of ``text``: the two's complement of its byte sum, as 2 hex digits."""
    return f"{-sum(text.encode('ascii')) & 0xFF:02X}"


@dataclass(frozen=True)
class Request:
    """One command line, split into address, axis, message id and command text."""

    device: int
    axis: int
    message_id: int | None
    text: str
    # A rejection reason found while parsing (bad checksum, bad message id), or None.
    error: str | None = None


@dataclass(frozen=True)
class _Segment:
    """A stretch of constant acceleration, starting ``start_s`` after the motion began (simulated time)."""

    start_s: float
    duration_s: float
    position: float
    velocity: float
    acceleration: float

    def position_at(self, t_s: float) -> float:
        dt = min(max(t_s - self.start_s, 0.0), self.duration_s)
        return self.position + self.velocity * dt + 0.5 * self.acceleration * dt * dt

    def velocity_at(self, t_s: float) -> float:
        dt = min(max(t_s - self.start_s, 0.0), self.duration_s)
        return self.velocity + self.acceleration * dt


class _Motion:
    """A move in progress: segments in simulated time, mapped to the clock through ``time_scale``."""

    def __init__(self, segments: list[_Segment], started_at: float, time_scale: float, *, homing: bool = False):
        self.segments = segments
        self.started_at = started_at
        self.time_scale = time_scale
        self.homing = homing
        self.stalled = False
        self.duration_s = sum(segment.duration_s for segment in segments)

    def _elapsed_s(self, now: float) -> float:
        if self.time_scale == 0:
            return math.inf
        return (now - self.started_at) / self.time_scale

    def done(self, now: float) -> bool:
        return not self.stalled and self._elapsed_s(now) >= self.duration_s

    def position(self, now: float) -> float:
        if self.stalled:
            return self.segments[0].position
        t_s = self._elapsed_s(now)
        segment = next((s for s in self.segments if t_s < s.start_s + s.duration_s), self.segments[-1])
        return segment.position_at(t_s)

    def velocity(self, now: float) -> float:
        if self.stalled or self.done(now):
            return 0.0
        t_s = self._elapsed_s(now)
        segment = next((s for s in self.segments if t_s < s.start_s + s.duration_s), self.segments[-1])
        return segment.velocity_at(t_s)


def trapezoid(start: float, target: float, speed: float, acceleration: float) -> list[_Segment]:
    """Return the segments of a move from rest to rest: accelerate, cruise at ``speed``, decelerate."""
    distance = abs(target - start)
    direction = 1.0 if target >= start else -1.0
    if distance == 0:
        return [_Segment(0.0, 0.0, start, 0.0, 0.0)]

    ramp_s = speed / acceleration
    ramp_distance = 0.5 * acceleration * ramp_s**2
    if 2 * ramp_distance >= distance:
        # Too short to reach full speed: a triangular profile.
        ramp_s = math.sqrt(distance / acceleration)
        ramp_distance = distance / 2
        speed = acceleration * ramp_s
    cruise_s = (distance - 2 * ramp_distance) / speed

    v, a = direction * speed, direction * acceleration
    accelerate = _Segment(0.0, ramp_s, start, 0.0, a)
    cruise = _Segment(ramp_s, cruise_s, start + direction * ramp_distance, v, 0.0)
    decelerate = _Segment(ramp_s + cruise_s, ramp_s, target - direction * ramp_distance, v, -a)
    return [accelerate, cruise, decelerate]


class SimulatedZaberDevice:
    """One Zaber device with one axis. Thread-safe: the server thread and a test may use it at once.

    Parameters
    ----------
    address
        Device number on the daisy chain.
    microstep_mm
        Length of one microstep, in mm; sets ``limit.max`` from ``travel_mm``.
    travel_mm
        Travel range, in mm: ``limit.min`` is 0 and ``limit.max`` is this many mm of microsteps.
    velocity_mm_s, acceleration_mm_s2
        Top speed and acceleration of moves and homing.
    time_scale
        Duration of simulated motion relative to real time: 0 ends every move at once.
    homed
        Start with a reference position; False (the default) starts with the WR flag, as after power-up.
    position_mm
        Position reported at start, in mm.
    reject_moves_when_unhomed
        Reject ``move`` commands while WR is set. Firmware differs here.
    checksum_replies
        Start with ``comm.checksum`` = 1, so that every reply carries a checksum.
    clock
        Source of time in seconds; tests inject one to step through a move without sleeping.
    """

    def __init__(
        self,
        *,
        address: int = 1,
        microstep_mm: float = 0.000047625,
        travel_mm: float = 150.0,
        velocity_mm_s: float = 20.0,
        acceleration_mm_s2: float = 200.0,
        time_scale: float = 0.0,
        homed: bool = False,
        position_mm: float = 0.0,
        reject_moves_when_unhomed: bool = False,
        checksum_replies: bool = False,
        device_id: int = 50000,
        serial_number: int = 123456,
        firmware_version: str = "7.38",
        resolution: int = 64,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= address <= 99:
            raise ValueError(f"Zaber device addresses are 1 to 99, got {address}")
        if time_scale < 0:
            raise ValueError(f"time_scale must be 0 or more, got {time_scale}")
        self.address = address
        self.microstep_mm = microstep_mm
        self.time_scale = time_scale
        self.reject_moves_when_unhomed = reject_moves_when_unhomed
        self.device_id = device_id
        self.serial_number = serial_number
        self.firmware_version = firmware_version
        self.resolution = resolution
        self.clock = clock
        self.limit_min = 0
        self.limit_max = round(travel_mm / microstep_mm)
        # Speeds in microsteps/s and microsteps/s², as the firmware stores them.
        self.speed = velocity_mm_s / microstep_mm
        self.acceleration = acceleration_mm_s2 / microstep_mm
        self.comm_checksum = int(checksum_replies)
        self._lock = threading.RLock()
        self._position = float(round(position_mm / microstep_mm))
        self._homed = homed
        self._latched_flags: set[str] = set()
        self._motion: _Motion | None = None

    # -- state -------------------------------------------------------------------------------------

    @property
    def position(self) -> int:
        """Current position, in microsteps."""
        with self._lock:
            return round(self._current_position())

    @property
    def position_mm(self) -> float:
        return self.position * self.microstep_mm

    @property
    def homed(self) -> bool:
        with self._lock:
            self._settle()
            return self._homed

    @property
    def busy(self) -> bool:
        with self._lock:
            self._settle()
            return self._motion is not None

    def flags(self) -> list[str]:
        """Return the active warning flags, highest priority first."""
        with self._lock:
            self._settle()
            active = set(self._latched_flags)
            if not self._homed:
                active.add("WR")
            return sorted(active, key=lambda flag: FLAG_PRIORITY.index(flag) if flag in FLAG_PRIORITY else 99)

    def raise_flag(self, flag: str) -> None:
        """Latch a warning flag (e.g. FS, WL, NC) until ``warnings clear``, as the firmware does."""
        with self._lock:
            self._latched_flags.add(flag)

    def stall(self) -> None:
        """Freeze the axis where it is, BUSY, until ``stop`` or ``estop``: a move that never ends."""
        with self._lock:
            position = self._current_position()
            self._position = position
            self._motion = _Motion([_Segment(0.0, 0.0, position, 0.0, 0.0)], self.clock(), self.time_scale)
            self._motion.stalled = True

    def _settle(self) -> None:
        """Finish a motion whose time is up."""
        if self._motion is not None and self._motion.done(self.clock()):
            self._position = self._motion.segments[-1].position_at(math.inf)
            if self._motion.homing:
                self._homed = True
                self._position = 0.0
            self._motion = None

    def _current_position(self) -> float:
        self._settle()
        return self._position if self._motion is None else self._motion.position(self.clock())

    # -- parsing -----------------------------------------------------------------------------------

    def parse(self, line: str) -> Request | None:
        """Split one command line (starting with ``/``) into a :class:`Request`; None if it is not for this device."""
        body = line.strip()
        if not body.startswith("/"):
            return None
        body = body[1:]
        error = None
        if ":" in body:
            body, _, sent = body.rpartition(":")
            # NOTE: a bad checksum gets RJ BADDATA here; whether firmware rejects or ignores it is unverified.
            if sent.strip().upper() != checksum(body):
                error = "BADDATA"

        words = body.split()
        numbers: list[int] = []
        while words and len(numbers) < 3 and words[0].isdigit():
            numbers.append(int(words.pop(0)))
        device = numbers[0] if numbers else 0
        axis = numbers[1] if len(numbers) > 1 else 0
        message_id = numbers[2] if len(numbers) > 2 else None
        if device not in (0, self.address):
            return None
        if error is None and message_id is not None and message_id > 99:
            error = "BADMESSAGEID"
        return Request(device, axis, message_id, " ".join(words), error)

    # -- replies -----------------------------------------------------------------------------------

    def execute(self, request: Request) -> str:
        """Carry out ``request`` and return the reply line, without its terminator."""
        with self._lock:
            self._settle()
            if request.error is not None:
                return self.reply(request, request.error, accepted=False)
            if request.axis not in (0, 1):
                return self.reply(request, "BADAXIS", accepted=False)
            words = request.text.split()
            if not words:
                return self.reply(request, "0")
            handler = {
                "home": self._home,
                "move": self._move,
                "stop": self._stop,
                "estop": self._estop,
                "get": self._get,
                "set": self._set,
                "warnings": self._warnings,
            }.get(words[0])
            if handler is None:
                return self.reply(request, "BADCOMMAND", accepted=False)
            return handler(request, words[1:])

    def reply(self, request: Request, data: str, *, accepted: bool = True) -> str:
        """Format a reply to ``request`` with the device's current state and highest-priority flag."""
        with self._lock:
            flags = self.flags()
            fields = [f"{self.address:02d}", str(request.axis)]
            if request.message_id is not None:
                fields.append(f"{request.message_id:02d}")
            fields += ["OK" if accepted else "RJ", "BUSY" if self._motion is not None else "IDLE"]
            fields += [flags[0] if flags else "--", data]
            body = " ".join(fields)
            if self.comm_checksum:
                body = f"{body}:{checksum(body)}"
            return f"@{body}"

    def _home(self, request: Request, args: list[str]) -> str:
        if args:
            return self.reply(request, "BADDATA", accepted=False)
        self._begin_motion(0.0, homing=True)
        return self.reply(request, "0")

    def _move(self, request: Request, args: list[str]) -> str:
        if not args or args[0] not in ("abs", "rel", "min", "max"):
            return self.reply(request, "BADCOMMAND", accepted=False)
        if self.reject_moves_when_unhomed and not self._homed:
            # NOTE: the reason firmware gives for a move without a reference position is unverified.
            return self.reply(request, "BADDATA", accepted=False)

        mode = args[0]
        if mode in ("min", "max"):
            if len(args) != 1:
                return self.reply(request, "BADDATA", accepted=False)
            target = self.limit_min if mode == "min" else self.limit_max
        else:
            if len(args) != 2 or not _INTEGER.match(args[1]):
                return self.reply(request, "BADDATA", accepted=False)
            target = int(args[1]) + (round(self._current_position()) if mode == "rel" else 0)
        # NOTE: BADDATA for a target outside limit.min..limit.max follows the documented meaning of
        # BADDATA (data out of range); not checked against a physical device.
        if not self.limit_min <= target <= self.limit_max:
            return self.reply(request, "BADDATA", accepted=False)
        self._begin_motion(float(target))
        return self.reply(request, "0")

    def _begin_motion(self, target: float, *, homing: bool = False) -> None:
        now = self.clock()
        start = self._current_position()
        if self._motion is not None:
            self._latched_flags.add("NI")
        self._position = start
        segments = trapezoid(start, target, self.speed, self.acceleration)
        self._motion = _Motion(segments, now, self.time_scale, homing=homing)
        self._settle()

    def _stop(self, request: Request, args: list[str]) -> str:
        if args:
            return self.reply(request, "BADDATA", accepted=False)
        if self._motion is not None:
            now = self.clock()
            position, velocity = self._motion.position(now), self._motion.velocity(now)
            self._latched_flags.add("NI")
            if self._motion.stalled or velocity == 0:
                self._position, self._motion = position, None
            else:
                # Decelerate from the current speed to rest.
                brake = -math.copysign(self.acceleration, velocity)
                segment = _Segment(0.0, abs(velocity) / self.acceleration, position, velocity, brake)
                self._position = position
                self._motion = _Motion([segment], now, self.time_scale)
                self._settle()
        return self.reply(request, "0")

    def _estop(self, request: Request, args: list[str]) -> str:
        if args:
            return self.reply(request, "BADDATA", accepted=False)
        if self._motion is not None:
            self._position = self._current_position()
            self._motion = None
            self._latched_flags.add("NI")
        return self.reply(request, "0")

    def _get(self, request: Request, args: list[str]) -> str:
        if len(args) != 1 or args[0] not in _DEVICE_SETTINGS | _AXIS_SETTINGS:
            return self.reply(request, "BADCOMMAND", accepted=False)
        setting = args[0]
        if setting in _DEVICE_SETTINGS and request.axis != 0:
            return self.reply(request, "DEVICEONLY", accepted=False)
        values = {
            "deviceid": str(self.device_id),
            "system.serial": str(self.serial_number),
            "version": self.firmware_version,
            "comm.checksum": str(self.comm_checksum),
            "system.axiscount": "1",
            "pos": str(round(self._current_position())),
            "limit.min": str(self.limit_min),
            "limit.max": str(self.limit_max),
            "limit.home.triggered": "1" if self._homed else "0",
            "maxspeed": str(round(self.speed * _SPEED_UNIT)),
            "accel": str(round(self.acceleration * _ACCEL_UNIT)),
            "resolution": str(self.resolution),
        }
        return self.reply(request, values[setting])

    def _set(self, request: Request, args: list[str]) -> str:
        if len(args) != 2 or args[0] not in _WRITABLE_SETTINGS:
            return self.reply(request, "BADCOMMAND", accepted=False)
        setting, value = args
        if setting in _DEVICE_SETTINGS and request.axis != 0:
            return self.reply(request, "DEVICEONLY", accepted=False)
        if not _INTEGER.match(value):
            return self.reply(request, "BADDATA", accepted=False)
        number = int(value)
        if setting == "comm.checksum" and number in (0, 1):
            self.comm_checksum = number
        elif setting == "maxspeed" and number > 0:
            self.speed = number / _SPEED_UNIT
        elif setting == "accel" and number > 0:
            self.acceleration = number / _ACCEL_UNIT
        else:
            return self.reply(request, "BADDATA", accepted=False)
        return self.reply(request, "0")

    def _warnings(self, request: Request, args: list[str]) -> str:
        if args not in ([], ["clear"]):
            return self.reply(request, "BADCOMMAND", accepted=False)
        flags = self.flags()
        # The reply lists the flags that were active; "clear" then drops the latched ones (WR stays until homed).
        reply = self.reply(request, " ".join([f"{len(flags):02d}", *flags]))
        if args == ["clear"]:
            self._latched_flags.clear()
        return reply
