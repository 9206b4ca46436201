"""ZaberStage against the simulated stage on a real pseudo-terminal: units, limits, homing, flags, factories."""

from __future__ import annotations

import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from fluoscan.acquisition.config import FluoscanConfig, parse_config
from fluoscan.acquisition.devices import DeviceContext, find_factory
from fluoscan.drivers import DeviceError, DeviceUnavailable, Stage
from fluoscan.drivers.errors import DeviceDisconnected
from fluoscan.drivers.zaber import CommandRejected, ZaberStage, open_zaber_stage
from fluoscan.simulators.stage import StageSimulator, open_simulated_stage
from fluoscan.simulators.stage_device import SimulatedZaberDevice

MICROSTEP_MM = 0.000047625
TIMEOUT_S = 0.5

StageFactory = Callable[..., tuple[ZaberStage, StageSimulator]]


@pytest.fixture
def make_stage() -> Iterator[StageFactory]:
    """Return a function that serves a simulated device and opens a ZaberStage on it; both close after the test."""
    with contextlib.ExitStack() as stack:

        def make(device: dict[str, Any] | None = None, faults: list | None = None, **stage: Any):
            settings = {"microstep_mm": MICROSTEP_MM, **(device or {})}
            simulator = stack.enter_context(StageSimulator(SimulatedZaberDevice(**settings), faults=faults))
            stage.setdefault("microstep_mm", MICROSTEP_MM)
            stage.setdefault("timeout_s", TIMEOUT_S)
            opened = stack.enter_context(ZaberStage(simulator.port, **stage))
            return opened, simulator

        yield make


def test_stage_satisfies_protocol(make_stage: StageFactory) -> None:
    stage, _ = make_stage()
    assert isinstance(stage, Stage)


def test_identity_names_device_serial_and_firmware(make_stage: StageFactory) -> None:
    stage, _ = make_stage(device={"device_id": 43210, "serial_number": 98765, "firmware_version": "7.12"})
    assert "ID 43210" in stage.identity()
    assert "serial 98765" in stage.identity()
    assert "firmware 7.12" in stage.identity()


@pytest.mark.parametrize("position_mm", [0.0, 0.000047625, 12.5, 75.123456, 149.99])
def test_move_converts_mm_to_microsteps(make_stage: StageFactory, position_mm: float) -> None:
    stage, simulator = make_stage(device={"homed": True})
    reached_mm = stage.move_to(position_mm)
    assert simulator.device.position == round(position_mm / MICROSTEP_MM)
    assert reached_mm == pytest.approx(position_mm, abs=MICROSTEP_MM / 2)
    assert stage.position_mm() == reached_mm


@pytest.mark.parametrize("microstep_mm", [0.000047625, 0.0001, 0.001])
def test_position_reads_back_in_mm(make_stage: StageFactory, microstep_mm: float) -> None:
    stage, simulator = make_stage(device={"microstep_mm": microstep_mm, "homed": True}, microstep_mm=microstep_mm)
    stage.move_to(10.0)
    assert stage.position_mm() == pytest.approx(simulator.device.position * microstep_mm)


@pytest.mark.parametrize(
    ("soft_limits_mm", "expected_mm"),
    [(None, (0.0, 150.0)), ((10.0, 100.0), (10.0, 100.0)), ((-5.0, 200.0), (0.0, 150.0)), ((20.0, 400.0), (20.0, 150.0))],
)
def test_limits_intersect_soft_and_device(
    make_stage: StageFactory, soft_limits_mm: tuple[float, float] | None, expected_mm: tuple[float, float]
) -> None:
    stage, _ = make_stage(limits_mm=soft_limits_mm)
    low, high = stage.limits_mm()
    assert low == pytest.approx(expected_mm[0], abs=MICROSTEP_MM)
    assert high == pytest.approx(expected_mm[1], abs=MICROSTEP_MM)


def test_limits_without_overlap_fail_at_open(make_stage: StageFactory) -> None:
    with pytest.raises(DeviceError, match="stage.limits_mm"):
        make_stage(limits_mm=(200.0, 300.0))


@pytest.mark.parametrize("position_mm", [120.0, 9.99, -1.0, float("nan"), float("inf")])
def test_soft_limit_refused_before_sending(make_stage: StageFactory, position_mm: float) -> None:
    stage, simulator = make_stage(device={"homed": True}, limits_mm=(10.0, 100.0))
    with pytest.raises(DeviceError) as raised:
        stage.move_to(position_mm)
    message = str(raised.value)
    assert f"{position_mm:g} mm" in message
    assert "10..100 mm" in message
    assert "stage.limits_mm" in message
    assert not any(request.startswith("move") for request in simulator.requests)


def test_move_may_touch_limit_within_rounding(make_stage: StageFactory) -> None:
    stage, simulator = make_stage(device={"homed": True}, limits_mm=(10.0, 100.0))
    stage.move_to(100.0 + 1e-9)
    # The last whole microstep inside the limit.
    assert simulator.device.position == math.floor(100.0 / MICROSTEP_MM)


def test_not_homed_at_start(make_stage: StageFactory) -> None:
    stage, _ = make_stage()
    assert not stage.is_homed()


def test_home_gives_reference_at_zero(make_stage: StageFactory) -> None:
    stage, simulator = make_stage(device={"position_mm": 30.0})
    stage.home()
    assert stage.is_homed()
    assert stage.position_mm() == 0.0
    assert simulator.device.homed


def test_unhomed_move_rejected_names_homing(make_stage: StageFactory) -> None:
    stage, _ = make_stage(device={"reject_moves_when_unhomed": True})
    with pytest.raises(DeviceError, match="not homed.*stage.homing"):
        stage.move_to(5.0)


def test_unhomed_move_allowed_by_firmware(make_stage: StageFactory) -> None:
    stage, _ = make_stage()
    assert stage.move_to(5.0) == pytest.approx(5.0, abs=MICROSTEP_MM)


def test_rejection_carries_reason(make_stage: StageFactory) -> None:
    stage, _ = make_stage()
    with pytest.raises(CommandRejected) as raised:
        stage._request("frobnicate")
    assert raised.value.reason == "BADCOMMAND"
    assert "frobnicate" in str(raised.value)
    assert "BADCOMMAND" in str(raised.value)


def test_stop_interrupts_realistic_move(make_stage: StageFactory) -> None:
    stage, simulator = make_stage(device={"homed": True, "time_scale": 1.0}, move_timeout_s=5.0)
    outcome: list[BaseException | float] = []

    def move() -> None:
        try:
            outcome.append(stage.move_to(140.0))
        except DeviceError as exc:
            outcome.append(exc)

    mover = threading.Thread(target=move)
    mover.start()
    deadline = time.monotonic() + 2.0
    while not simulator.device.busy and time.monotonic() < deadline:
        time.sleep(0.005)
    stage.stop()
    mover.join(timeout=5.0)

    assert not mover.is_alive()
    assert isinstance(outcome[0], DeviceError)
    assert "interrupted" in str(outcome[0])
    assert simulator.device.position_mm < 140.0


@pytest.mark.parametrize("flag", ["FS", "FE", "FQ"])
def test_fault_flag_raises_and_clears(make_stage: StageFactory, flag: str) -> None:
    stage, simulator = make_stage(device={"homed": True})
    simulator.device.raise_flag(flag)
    with pytest.raises(DeviceError, match=f"fault {flag}"):
        stage.move_to(1.0)
    assert stage.clear_warnings() == [flag]
    assert stage.move_to(1.0) == pytest.approx(1.0, abs=MICROSTEP_MM)


def test_fault_at_open_fails_with_flag(make_stage: StageFactory) -> None:
    device = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM)
    device.raise_flag("FS")
    with StageSimulator(device) as simulator, pytest.raises(DeviceError, match="FS .stalled and stopped."):
        ZaberStage(simulator.port, microstep_mm=MICROSTEP_MM, timeout_s=TIMEOUT_S)


def test_notices_cleared_at_open() -> None:
    device = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, homed=True)
    device.raise_flag("NI")
    with StageSimulator(device) as simulator:
        with ZaberStage(simulator.port, microstep_mm=MICROSTEP_MM, timeout_s=TIMEOUT_S) as stage:
            assert stage.warnings() == []
        assert "warnings clear" in simulator.requests


def test_warning_flag_counted_and_logged_once(make_stage: StageFactory, caplog: pytest.LogCaptureFixture) -> None:
    stage, simulator = make_stage(device={"homed": True})
    simulator.device.raise_flag("WT")
    with caplog.at_level(logging.DEBUG, logger="fluoscan.drivers.zaber"):
        for _ in range(3):
            stage.position_mm()
    warned = [record for record in caplog.records if record.levelno == logging.WARNING and "WT" in record.getMessage()]
    assert len(warned) == 1
    assert stage.warning_counts["WT"] == 3


@pytest.mark.parametrize("checksum_replies", [False, True])
def test_checksums_both_ways(make_stage: StageFactory, checksum_replies: bool) -> None:
    stage, simulator = make_stage(device={"homed": True, "checksum_replies": checksum_replies}, checksums=True)
    assert stage.move_to(3.0) == pytest.approx(3.0, abs=MICROSTEP_MM)
    assert simulator.device.position == round(3.0 / MICROSTEP_MM)


@pytest.mark.parametrize("message_ids", [False, True])
def test_without_message_ids(make_stage: StageFactory, message_ids: bool) -> None:
    stage, _ = make_stage(device={"homed": True}, message_ids=message_ids)
    assert stage.move_to(2.0) == pytest.approx(2.0, abs=MICROSTEP_MM)


def test_realistic_move_takes_profile_time(make_stage: StageFactory) -> None:
    # 4 mm at 20 mm/s and 200 mm/s²: two 0.1 s ramps and 0.1 s at full speed.
    stage, _ = make_stage(device={"homed": True, "time_scale": 1.0})
    started = time.monotonic()
    stage.move_to(4.0)
    elapsed_s = time.monotonic() - started
    assert elapsed_s >= 0.3
    assert elapsed_s < 0.3 + 0.3


def test_instant_move_is_fast(make_stage: StageFactory) -> None:
    stage, _ = make_stage(device={"homed": True, "time_scale": 0.0})
    started = time.monotonic()
    stage.move_to(140.0)
    assert time.monotonic() - started < 0.1


def test_close_is_idempotent_and_final(make_stage: StageFactory) -> None:
    stage, _ = make_stage()
    stage.close()
    stage.close()
    assert not stage.is_open
    with pytest.raises(DeviceDisconnected, match="closed"):
        stage.position_mm()


def test_missing_port_unavailable(tmp_path) -> None:
    missing = str(tmp_path / "ttyUSB9")
    with pytest.raises(DeviceUnavailable) as raised:
        ZaberStage(missing, microstep_mm=MICROSTEP_MM, timeout_s=TIMEOUT_S)
    assert missing in str(raised.value)
    assert "dialout" in str(raised.value) or "exists" in str(raised.value)


def test_silent_port_times_out_naming_address(tmp_path) -> None:
    # A simulator at another address stays silent, like a wrong stage.device_address.
    with StageSimulator(SimulatedZaberDevice(address=2)) as simulator:
        started = time.monotonic()
        with pytest.raises(DeviceError, match="stage.device_address"):
            ZaberStage(simulator.port, microstep_mm=MICROSTEP_MM, timeout_s=TIMEOUT_S)
        assert time.monotonic() - started < TIMEOUT_S + 0.5


def _config(**stage: Any) -> FluoscanConfig:
    scan = {"y_start_mm": 10.0, "step_mm": 1.0, "n_lines": 5}
    return parse_config({"scan": scan, "stage": stage, "simulation": {"time_scale": 0.0}})


def test_factory_needs_port() -> None:
    context = DeviceContext(config=_config(driver="zaber"))
    with pytest.raises(DeviceUnavailable, match="stage.port"):
        open_zaber_stage(context)


def test_factory_opens_configured_port() -> None:
    with StageSimulator(SimulatedZaberDevice(address=3)) as simulator:
        context = DeviceContext(config=_config(driver="zaber", port=simulator.port, device_address=3, limits_mm=[5, 50]))
        with open_zaber_stage(context) as stage:
            assert stage.device_address == 3
            assert stage.limits_mm() == (5.0, 50.0)


def test_simulated_factory_from_entry_point() -> None:
    context = DeviceContext(config=_config(driver="simulated"), options={"stage_simulator": {"homed": True}})
    factory = find_factory("stage", "simulated")
    with context.stack:
        with factory(context) as stage:
            assert stage.is_homed()
            assert stage.move_to(7.5) == pytest.approx(7.5, abs=MICROSTEP_MM)


def test_zaber_entry_point_is_factory() -> None:
    assert find_factory("stage", "zaber") is open_zaber_stage
    assert find_factory("stage", "simulated") is open_simulated_stage


def _serve_over_tcp(listener: socket.socket, device: SimulatedZaberDevice) -> None:
    connection, _ = listener.accept()
    with connection, connection.makefile("rb") as lines:
        for raw in lines:
            request = device.parse(raw.decode("ascii"))
            if request is not None:
                connection.sendall(f"{device.execute(request)}\r\n".encode("ascii"))


def test_socket_url(tmp_path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port_number = listener.getsockname()[1]
    server = threading.Thread(target=_serve_over_tcp, args=(listener, SimulatedZaberDevice(homed=True)), daemon=True)
    server.start()
    with listener, ZaberStage(f"socket://127.0.0.1:{port_number}", microstep_mm=MICROSTEP_MM, timeout_s=TIMEOUT_S) as stage:
        assert stage.move_to(12.0) == pytest.approx(12.0, abs=MICROSTEP_MM)
    server.join(timeout=2.0)
    assert not server.is_alive()
