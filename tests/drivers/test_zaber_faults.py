"""ZaberStage under every injected fault kind: the right error, within its timeout, and recovery where it can."""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fluoscan.drivers import DeviceDisconnected, DeviceProtocolError, DeviceTimeout
from fluoscan.drivers.zaber import CommandRejected, ZaberStage
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.simulators.stage import StageSimulator
from fluoscan.simulators.stage_device import SimulatedZaberDevice

MICROSTEP_MM = 0.000047625
TIMEOUT_S = 0.3
MOVE_TIMEOUT_S = 0.4
# Scheduling slack on a loaded 2-core machine; every bound below is the call's own timeout plus this.
MARGIN_S = 0.5

StageFactory = Callable[..., tuple[ZaberStage, StageSimulator]]


@pytest.fixture
def make_stage() -> Iterator[StageFactory]:
    """Return a function that serves a homed simulated device with faults and opens a ZaberStage on it."""
    with contextlib.ExitStack() as stack:

        def make(faults: list[Fault], reopen_after_hang_up: bool = False, **stage: Any):
            device = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, homed=True)
            # Always behind a link: a reconnect to the bare pty path could reach another process's pty.
            link = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "ttyZaber"
            simulator = StageSimulator(
                device, faults=faults, link_path=link, reopen_after_hang_up=reopen_after_hang_up
            )
            stack.enter_context(simulator)
            opened = ZaberStage(
                simulator.port,
                microstep_mm=MICROSTEP_MM,
                timeout_s=TIMEOUT_S,
                move_timeout_s=MOVE_TIMEOUT_S,
                **stage,
            )
            stack.enter_context(opened)
            return opened, simulator

        yield make


ACTIONS: dict[str, Callable[[ZaberStage], object]] = {
    "position": lambda stage: stage.position_mm(),
    "move": lambda stage: stage.move_to(10.0),
    "home": lambda stage: stage.home(),
    "stop": lambda stage: stage.stop(),
}

# (fault list, action, expected error, time the call may take before MARGIN_S)
FAILURES = {
    "no reply to query": ([Fault(FaultKind.TIMEOUT, "get pos")], "position", DeviceTimeout, TIMEOUT_S),
    "no reply to move": ([Fault(FaultKind.TIMEOUT, "move abs")], "move", DeviceTimeout, TIMEOUT_S),
    "no reply to stop": ([Fault(FaultKind.TIMEOUT, "stop")], "stop", DeviceTimeout, TIMEOUT_S),
    "reply after timeout": ([Fault(FaultKind.LATE, "get pos", delay_s=3 * TIMEOUT_S)], "position", DeviceTimeout, TIMEOUT_S),
    "garbled move reply": ([Fault(FaultKind.GARBLE, "move abs")], "move", DeviceProtocolError, TIMEOUT_S),
    "garbled query twice": (
        [Fault(FaultKind.GARBLE, "get pos", repeat=True)],
        "position",
        DeviceProtocolError,
        2 * TIMEOUT_S,
    ),
    "rejected move": ([Fault(FaultKind.REJECT, "move abs")], "move", CommandRejected, TIMEOUT_S),
    "rejected home": ([Fault(FaultKind.REJECT, "home")], "home", CommandRejected, TIMEOUT_S),
    "stalled move": ([Fault(FaultKind.STALL, "move abs")], "move", DeviceTimeout, MOVE_TIMEOUT_S + 2 * TIMEOUT_S),
    "stalled home": ([Fault(FaultKind.STALL, "home")], "home", DeviceTimeout, MOVE_TIMEOUT_S + 2 * TIMEOUT_S),
    "hang-up during move": ([Fault(FaultKind.DISCONNECT, "move abs")], "move", DeviceDisconnected, 2 * TIMEOUT_S),
    "hang-up during query": ([Fault(FaultKind.DISCONNECT, "get pos")], "position", DeviceDisconnected, 2 * TIMEOUT_S),
}


@pytest.mark.parametrize(("faults", "action", "error", "allowed_s"), FAILURES.values(), ids=FAILURES.keys())
def test_fault_raises_within_timeout(
    make_stage: StageFactory, faults: list[Fault], action: str, error: type[Exception], allowed_s: float
) -> None:
    stage, _ = make_stage(faults)
    started = time.monotonic()
    with pytest.raises(error):
        ACTIONS[action](stage)
    assert time.monotonic() - started < allowed_s + MARGIN_S


def test_rejection_names_command_and_reason(make_stage: StageFactory) -> None:
    stage, _ = make_stage([Fault(FaultKind.REJECT, "move abs")])
    with pytest.raises(CommandRejected) as raised:
        stage.move_to(10.0)
    assert raised.value.reason == "BADDATA"
    assert "move abs 209974" in str(raised.value)
    assert "BADDATA" in str(raised.value)


def test_fault_at_chosen_move(make_stage: StageFactory) -> None:
    stage, _ = make_stage([Fault(FaultKind.REJECT, "move abs", occurrence=3)])
    stage.move_to(1.0)
    stage.move_to(2.0)
    with pytest.raises(CommandRejected):
        stage.move_to(3.0)
    assert stage.move_to(4.0) == pytest.approx(4.0, abs=MICROSTEP_MM)


def test_stalled_move_is_stopped(make_stage: StageFactory) -> None:
    stage, simulator = make_stage([Fault(FaultKind.STALL, "move abs")])
    with pytest.raises(DeviceTimeout, match="sent stop"):
        stage.move_to(10.0)
    requests = simulator.requests
    assert "stop" in requests[requests.index("move abs 209974") :]
    assert not simulator.device.busy


def test_late_reply_within_timeout_accepted(make_stage: StageFactory) -> None:
    stage, _ = make_stage([Fault(FaultKind.LATE, "get pos", delay_s=TIMEOUT_S / 3)])
    assert stage.position_mm() == 0.0


def test_late_reply_dropped_by_next_request(make_stage: StageFactory) -> None:
    stage, simulator = make_stage([Fault(FaultKind.LATE, "get pos", delay_s=1.5 * TIMEOUT_S)])
    with pytest.raises(DeviceTimeout):
        stage.position_mm()
    simulator.device.execute(simulator.device.parse("/1 1 move abs 1000"))
    # The late "0" arrives while this request waits; its message id gives it away.
    assert stage.position_mm() == pytest.approx(1000 * MICROSTEP_MM)


def test_garbled_query_sent_again(make_stage: StageFactory) -> None:
    stage, simulator = make_stage([Fault(FaultKind.GARBLE, "get pos")])
    assert stage.position_mm() == 0.0
    assert simulator.requests.count("get pos") == 2


def test_reconnect_after_pty_recreated(make_stage: StageFactory) -> None:
    stage, simulator = make_stage([Fault(FaultKind.DISCONNECT, "move abs")], reopen_after_hang_up=True)
    started = time.monotonic()
    assert stage.move_to(10.0) == pytest.approx(10.0, abs=MICROSTEP_MM)
    assert time.monotonic() - started < 2 * TIMEOUT_S + MARGIN_S
    assert simulator.disconnects == 1
    assert simulator.requests.count("move abs 209974") == 2


def test_reconnect_to_other_device_refused(tmp_path: Path) -> None:
    link = tmp_path / "ttyZaber"
    ours = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, homed=True, serial_number=111)
    other = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, homed=True, serial_number=555)
    with StageSimulator(ours, faults=[Fault(FaultKind.DISCONNECT, "move abs")]) as simulator, StageSimulator(other) as impostor:
        link.symlink_to(simulator.pty_path)
        with ZaberStage(str(link), microstep_mm=MICROSTEP_MM, timeout_s=TIMEOUT_S) as stage:
            # The link now leads elsewhere, as when a re-enumerated adapter gets another device's name.
            link.unlink()
            link.symlink_to(impostor.pty_path)
            with pytest.raises(DeviceDisconnected, match="another device"):
                stage.move_to(10.0)
        assert impostor.requests == ["get system.serial"]


def test_disconnected_stage_stays_closed(make_stage: StageFactory) -> None:
    stage, _ = make_stage([Fault(FaultKind.DISCONNECT, "move abs")])
    with pytest.raises(DeviceDisconnected):
        stage.move_to(10.0)
    started = time.monotonic()
    with pytest.raises(DeviceDisconnected, match="closed"):
        stage.position_mm()
    assert time.monotonic() - started < MARGIN_S
