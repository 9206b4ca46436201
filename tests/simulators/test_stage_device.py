"""Motion model of the simulated Zaber device: trapezoidal profiles and time scaling."""

from __future__ import annotations

import math

import pytest

from fluoscan.simulators.stage_device import Request, SimulatedZaberDevice, trapezoid


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


# (start, target, speed, acceleration, expected duration in s)
PROFILES = [
    (0.0, 400.0, 100.0, 100.0, 5.0),  # 1 s ramps of 50 each, 3 s cruise
    (0.0, 50.0, 100.0, 100.0, 2 * math.sqrt(0.5)),  # triangular: never reaches full speed
    (400.0, 0.0, 100.0, 100.0, 5.0),  # backwards
    (10.0, 10.0, 100.0, 100.0, 0.0),  # no distance
]


@pytest.mark.parametrize(("start", "target", "speed", "acceleration", "duration_s"), PROFILES)
def test_trapezoid_duration(start: float, target: float, speed: float, acceleration: float, duration_s: float) -> None:
    segments = trapezoid(start, target, speed, acceleration)
    assert sum(segment.duration_s for segment in segments) == pytest.approx(duration_s)


@pytest.mark.parametrize(("start", "target", "speed", "acceleration", "duration_s"), PROFILES)
def test_trapezoid_ends_at_target_at_rest(
    start: float, target: float, speed: float, acceleration: float, duration_s: float
) -> None:
    last = trapezoid(start, target, speed, acceleration)[-1]
    end_s = last.start_s + last.duration_s
    assert last.position_at(end_s) == pytest.approx(target)
    assert last.velocity_at(end_s) == pytest.approx(0.0)


@pytest.mark.parametrize(("start", "target", "speed", "acceleration", "duration_s"), PROFILES)
def test_trapezoid_is_continuous(
    start: float, target: float, speed: float, acceleration: float, duration_s: float
) -> None:
    segments = trapezoid(start, target, speed, acceleration)
    for before, after in zip(segments, segments[1:]):
        boundary_s = after.start_s
        assert before.position_at(boundary_s) == pytest.approx(after.position)
        assert before.velocity_at(boundary_s) == pytest.approx(after.velocity)


@pytest.mark.parametrize(
    ("time_scale", "busy_at_s", "idle_at_s"),
    [(1.0, 0.29, 0.31), (0.5, 0.14, 0.16), (2.0, 0.59, 0.61)],
)
def test_time_scale_stretches_moves(time_scale: float, busy_at_s: float, idle_at_s: float) -> None:
    clock = FakeClock()
    # 4 mm at 20 mm/s and 200 mm/s² takes 0.3 s of simulated time.
    device = SimulatedZaberDevice(microstep_mm=0.001, time_scale=time_scale, homed=True, clock=clock)
    device.execute(Request(1, 1, None, "move abs 4000"))
    clock.now_s = busy_at_s
    assert device.busy
    clock.now_s = idle_at_s
    assert not device.busy


def test_zero_time_scale_moves_instantly() -> None:
    device = SimulatedZaberDevice(microstep_mm=0.001, time_scale=0.0, homed=True, clock=FakeClock())
    device.execute(Request(1, 1, None, "move abs 4000"))
    assert not device.busy
    assert device.position == 4000


def test_homing_sets_reference_and_zero() -> None:
    clock = FakeClock()
    device = SimulatedZaberDevice(microstep_mm=0.001, time_scale=1.0, position_mm=4.0, clock=clock)
    reply = device.execute(Request(1, 1, None, "home"))
    assert reply == "@01 1 OK BUSY WR 0"
    clock.now_s = 1.0
    assert device.homed
    assert device.position == 0


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("/1 1 get pos", Request(1, 1, None, "get pos")),
        ("/1 1 12 get pos", Request(1, 1, 12, "get pos")),
        ("/", Request(0, 0, None, "")),
        ("/1", Request(1, 0, None, "")),
        ("/0 0 home", Request(0, 0, None, "home")),
        ("/1 1 get pos:00", Request(1, 1, None, "get pos", error="BADDATA")),
        ("/2 1 get pos", None),
        ("1 1 get pos", None),
    ],
)
def test_parse_command_line(line: str, expected: Request | None) -> None:
    assert SimulatedZaberDevice().parse(line) == expected
