"""The stage simulator seen through a raw pyserial client, with no fluoscan driver code in the way."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
import serial

from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.simulators.stage import StageSimulator
from fluoscan.simulators.stage_device import SimulatedZaberDevice

MICROSTEP_MM = 0.000047625
LIMIT_MAX = round(150.0 / MICROSTEP_MM)
READ_TIMEOUT_S = 0.3


class FakeClock:
    """A clock that moves only when a test advances it."""

    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


def lrc(text: str) -> str:
    """Compute the Zaber checksum independently of the simulator's code."""
    total = 0
    for byte in text.encode("ascii"):
        total = (total + byte) & 0xFF
    return format((0x100 - total) & 0xFF, "02X")


def exchange(client: serial.Serial, line: str | bytes) -> str:
    """Send one line (``\\r\\n`` appended to a str) and return the reply without its terminator."""
    data = f"{line}\r\n".encode("ascii") if isinstance(line, str) else line
    client.write(data)
    reply = client.read_until(b"\r\n")
    assert reply.endswith(b"\r\n"), f"no complete reply to {data!r}, got {reply!r}"
    return reply[:-2].decode("ascii")


@pytest.fixture
def simulator(request: pytest.FixtureRequest) -> Iterator[StageSimulator]:
    settings = getattr(request, "param", {})
    faults = settings.pop("faults", None)
    device = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, **settings)
    with StageSimulator(device, faults=faults) as sim:
        yield sim


@pytest.fixture
def client(simulator: StageSimulator) -> Iterator[serial.Serial]:
    port = serial.Serial(simulator.port, 115200, timeout=READ_TIMEOUT_S)
    yield port
    port.close()


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("/1 0", "@01 0 OK IDLE WR 0"),
        ("/", "@01 0 OK IDLE WR 0"),
        ("/1", "@01 0 OK IDLE WR 0"),
        ("/0 1", "@01 1 OK IDLE WR 0"),
        ("/1 1 get pos", "@01 1 OK IDLE WR 0"),
        ("/1 0 get limit.max", f"@01 0 OK IDLE WR {LIMIT_MAX}"),
        ("/1 1 get limit.min", "@01 1 OK IDLE WR 0"),
        ("/1 1 get limit.home.triggered", "@01 1 OK IDLE WR 0"),
        ("/1 1 get resolution", "@01 1 OK IDLE WR 64"),
        ("/1 1 get maxspeed", f"@01 1 OK IDLE WR {round(20.0 / MICROSTEP_MM * 1.6384)}"),
        ("/1 0 get deviceid", "@01 0 OK IDLE WR 50000"),
        ("/1 0 07 get system.serial", "@01 0 07 OK IDLE WR 123456"),
        ("/1 0 get version", "@01 0 OK IDLE WR 7.38"),
        ("/1 1 warnings", "@01 1 OK IDLE WR 01 WR"),
        ("/1 1 frobnicate", "@01 1 RJ IDLE WR BADCOMMAND"),
        ("/1 1 get no.such.setting", "@01 1 RJ IDLE WR BADCOMMAND"),
        ("/1 1 get deviceid", "@01 1 RJ IDLE WR DEVICEONLY"),
        ("/1 2 get pos", "@01 2 RJ IDLE WR BADAXIS"),
        ("/1 1 move abs 12x", "@01 1 RJ IDLE WR BADDATA"),
        ("/1 1 move abs", "@01 1 RJ IDLE WR BADDATA"),
        ("/1 1 move abs -1", "@01 1 RJ IDLE WR BADDATA"),
        (f"/1 1 move abs {LIMIT_MAX + 1}", "@01 1 RJ IDLE WR BADDATA"),
        ("/1 1 move sideways", "@01 1 RJ IDLE WR BADCOMMAND"),
        ("/1 1 set maxspeed fast", "@01 1 RJ IDLE WR BADDATA"),
        ("/1 1 set pos 5", "@01 1 RJ IDLE WR BADCOMMAND"),
        ("/1 1 100 get pos", "@01 1 100 RJ IDLE WR BADMESSAGEID"),
    ],
)
def test_reply_to_command(client: serial.Serial, command: str, expected: str) -> None:
    assert exchange(client, command) == expected


def test_other_device_address_gets_no_reply(client: serial.Serial) -> None:
    client.write(b"/2 0\r\n")
    assert client.read_until(b"\r\n") == b""


@pytest.mark.parametrize("terminator", [b"\r", b"\n", b"\r\n"])
def test_terminators_accepted(client: serial.Serial, terminator: bytes) -> None:
    assert exchange(client, b"/1 1 get pos" + terminator) == "@01 1 OK IDLE WR 0"


def test_command_sent_byte_by_byte(client: serial.Serial) -> None:
    for byte in b"/1 1 get limit.min\r\n":
        client.write(bytes([byte]))
        client.flush()
    assert client.read_until(b"\r\n") == b"@01 1 OK IDLE WR 0\r\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"/1 1 get poz\x08s\r\n", "@01 1 OK IDLE WR 0"),
        (b"/1 1 frobnicate\x7f/1 1 get limit.min\r\n", "@01 1 OK IDLE WR 0"),
        (b"/1 1 get \x01junk\n/1 1 get resolution\n", "@01 1 OK IDLE WR 64"),
    ],
    ids=["backspace", "delete", "control byte"],
)
def test_editing_bytes(client: serial.Serial, data: bytes, expected: str) -> None:
    assert exchange(client, data) == expected


def test_home_clears_no_reference_flag(client: serial.Serial) -> None:
    assert exchange(client, "/1 1 home") == "@01 1 OK IDLE -- 0"
    assert exchange(client, "/1 1 get limit.home.triggered") == "@01 1 OK IDLE -- 1"


def test_instant_move_reaches_target(client: serial.Serial) -> None:
    exchange(client, "/1 1 home")
    assert exchange(client, "/1 1 move abs 10000") == "@01 1 OK IDLE -- 0"
    assert exchange(client, "/1 1 get pos") == "@01 1 OK IDLE -- 10000"


def test_relative_move_adds_to_position(client: serial.Serial) -> None:
    exchange(client, "/1 1 move abs 10000")
    exchange(client, "/1 1 move rel -2500")
    assert exchange(client, "/1 1 get pos") == "@01 1 OK IDLE WR 7500"


def test_move_max_goes_to_limit(client: serial.Serial) -> None:
    exchange(client, "/1 1 move max")
    assert exchange(client, "/1 1 get pos") == f"@01 1 OK IDLE WR {LIMIT_MAX}"


@pytest.mark.parametrize(
    ("simulator", "expected"),
    [({"reject_moves_when_unhomed": False}, "@01 1 OK IDLE WR 0"), ({"reject_moves_when_unhomed": True}, "@01 1 RJ IDLE WR BADDATA")],
    indirect=["simulator"],
    ids=["allowed", "rejected"],
)
def test_move_without_reference(client: serial.Serial, expected: str) -> None:
    assert exchange(client, "/1 1 move abs 1000") == expected


def test_realistic_move_busy_then_idle() -> None:
    clock = FakeClock()
    device = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, time_scale=1.0, homed=True, clock=clock)
    target = round(4.0 / MICROSTEP_MM)
    # 4 mm at 20 mm/s and 200 mm/s²: 0.1 s ramps of 1 mm each and 0.1 s at full speed.
    with StageSimulator(device) as sim, serial.Serial(sim.port, 115200, timeout=READ_TIMEOUT_S) as client:
        assert exchange(client, f"/1 1 move abs {target}") == "@01 1 OK BUSY -- 0"
        assert exchange(client, "/1 0") == "@01 0 OK BUSY -- 0"

        clock.advance(0.15)
        assert exchange(client, "/1 1") == "@01 1 OK BUSY -- 0"
        halfway = int(exchange(client, "/1 1 get pos").split()[-1])
        assert abs(halfway - target / 2) <= 1

        clock.advance(0.16)
        assert exchange(client, "/1 1") == "@01 1 OK IDLE -- 0"
        assert exchange(client, "/1 1 get pos") == f"@01 1 OK IDLE -- {target}"


def test_stop_decelerates_and_flags_interruption() -> None:
    clock = FakeClock()
    device = SimulatedZaberDevice(microstep_mm=MICROSTEP_MM, time_scale=1.0, homed=True, clock=clock)
    with StageSimulator(device) as sim, serial.Serial(sim.port, 115200, timeout=READ_TIMEOUT_S) as client:
        exchange(client, f"/1 1 move abs {LIMIT_MAX}")
        clock.advance(1.0)
        assert exchange(client, "/1 1 stop") == "@01 1 OK BUSY NI 0"
        clock.advance(0.1)
        assert exchange(client, "/1 1") == "@01 1 OK IDLE NI 0"
        assert exchange(client, "/1 1 warnings clear") == "@01 1 OK IDLE NI 01 NI"
        assert exchange(client, "/1 1 warnings") == "@01 1 OK IDLE -- 00"


def test_warnings_clear_keeps_no_reference_flag(client: serial.Serial, simulator: StageSimulator) -> None:
    simulator.device.raise_flag("FS")
    assert exchange(client, "/1 1 warnings clear") == "@01 1 OK IDLE FS 02 FS WR"
    assert exchange(client, "/1 1 warnings") == "@01 1 OK IDLE WR 01 WR"


def test_checksum_example_reply() -> None:
    device = SimulatedZaberDevice(homed=True, checksum_replies=True)
    with StageSimulator(device) as sim, serial.Serial(sim.port, 115200, timeout=READ_TIMEOUT_S) as client:
        assert exchange(client, "/1 0") == "@01 0 OK IDLE -- 0:8D"


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (f"/1 0 move abs 10000:{lrc('1 0 move abs 10000')}", "@01 0 OK IDLE WR 0"),
        ("/1 0 move abs 10000:41", "@01 0 OK IDLE WR 0"),
        ("/1 0 move abs 10000:42", "@01 0 RJ IDLE WR BADDATA"),
        (f"/1 1 05 get pos:{lrc('1 1 05 get pos')}", "@01 1 05 OK IDLE WR 0"),
    ],
    ids=["computed", "documented example", "wrong", "with message id"],
)
def test_command_checksum(client: serial.Serial, command: str, expected: str) -> None:
    assert exchange(client, command) == expected


def test_checksummed_replies(client: serial.Serial) -> None:
    assert exchange(client, "/1 0 set comm.checksum 1") == f"@01 0 OK IDLE WR 0:{lrc('01 0 OK IDLE WR 0')}"
    reply = exchange(client, "/1 1 get limit.max")
    body, _, sent = reply[1:].rpartition(":")
    assert body == f"01 1 OK IDLE WR {LIMIT_MAX}"
    assert sent == lrc(body)


@pytest.mark.parametrize(
    ("simulator", "expected"),
    [
        ({"faults": [Fault(FaultKind.REJECT, command="move abs", occurrence=2)]}, "@01 1 RJ IDLE WR BADDATA"),
        ({"faults": [Fault(FaultKind.REJECT, command="home")]}, None),
    ],
    indirect=["simulator"],
    ids=["second move", "other command"],
)
def test_reject_fault_at_chosen_move(client: serial.Serial, expected: str | None) -> None:
    assert exchange(client, "/1 1 move abs 100") == "@01 1 OK IDLE WR 0"
    second = exchange(client, "/1 1 move abs 200")
    assert second == (expected or "@01 1 OK IDLE WR 0")


@pytest.mark.parametrize("simulator", [{"faults": [Fault(FaultKind.TIMEOUT, command="move abs")]}], indirect=True)
def test_timeout_fault_drops_command(client: serial.Serial) -> None:
    client.write(b"/1 1 move abs 1000\r\n")
    assert client.read_until(b"\r\n") == b""
    assert exchange(client, "/1 1 get pos") == "@01 1 OK IDLE WR 0"


@pytest.mark.parametrize(
    "simulator", [{"faults": [Fault(FaultKind.LATE, command="get pos", delay_s=0.2)]}], indirect=True
)
def test_late_fault_delays_reply(client: serial.Serial) -> None:
    started = time.monotonic()
    assert exchange(client, "/1 1 get pos") == "@01 1 OK IDLE WR 0"
    assert time.monotonic() - started >= 0.2


@pytest.mark.parametrize("simulator", [{"faults": [Fault(FaultKind.GARBLE, command="get pos")]}], indirect=True)
def test_garble_fault_corrupts_reply(client: serial.Serial) -> None:
    client.write(b"/1 1 get pos\r\n")
    reply = client.read_until(b"\r\n")
    assert reply.endswith(b"\r\n")
    assert b"\xff" in reply


@pytest.mark.parametrize("simulator", [{"faults": [Fault(FaultKind.STALL, command="move abs")]}], indirect=True)
def test_stall_fault_stays_busy_until_stop(client: serial.Serial) -> None:
    exchange(client, "/1 1 move abs 1000")
    assert exchange(client, "/1 1") == "@01 1 OK BUSY WR 0"
    assert exchange(client, "/1 1") == "@01 1 OK BUSY WR 0"
    # WR outranks NI in the flag field; the warnings list shows both.
    assert exchange(client, "/1 1 stop") == "@01 1 OK IDLE WR 0"
    assert exchange(client, "/1 1 warnings") == "@01 1 OK IDLE WR 02 WR NI"


@pytest.mark.parametrize("simulator", [{"faults": [Fault(FaultKind.DISCONNECT, command="home")]}], indirect=True)
def test_disconnect_fault_hangs_up(client: serial.Serial, simulator: StageSimulator) -> None:
    client.write(b"/1 1 home\r\n")
    with pytest.raises(serial.SerialException):
        client.read_until(b"\r\n")
    assert simulator.wait_for_hang_ups(1, timeout_s=1.0)
    assert simulator.pty_path == ""


def test_disconnect_without_reopen_removes_link(tmp_path) -> None:
    link = tmp_path / "ttyZaber"
    faults = [Fault(FaultKind.DISCONNECT, command="home")]
    with StageSimulator(faults=faults, link_path=link, reopen_after_hang_up=False) as sim:
        with serial.Serial(sim.port, 115200, timeout=READ_TIMEOUT_S) as client:
            client.write(b"/1 1 home\r\n")
            with pytest.raises(serial.SerialException):
                client.read_until(b"\r\n")
        assert sim.wait_for_hang_ups(1, timeout_s=1.0)
        assert not link.exists()
        assert sim.join(timeout_s=1.0)


def test_disconnect_with_link_serves_again(tmp_path) -> None:
    link = tmp_path / "ttyZaber"
    faults = [Fault(FaultKind.DISCONNECT, command="home")]
    with StageSimulator(faults=faults, link_path=link) as sim:
        first_pty = sim.pty_path
        with serial.Serial(sim.port, 115200, timeout=READ_TIMEOUT_S) as client:
            client.write(b"/1 1 home\r\n")
            with pytest.raises(serial.SerialException):
                client.read_until(b"\r\n")
        assert sim.wait_for_hang_ups(1, timeout_s=1.0)
        assert os.readlink(link) == sim.pty_path
        with serial.Serial(sim.port, 115200, timeout=READ_TIMEOUT_S) as client:
            assert exchange(client, "/1 1 home") == "@01 1 OK IDLE -- 0"
        assert sim.disconnects == 1
        assert first_pty != ""
    assert not link.exists()


def test_requests_record_command_text(client: serial.Serial, simulator: StageSimulator) -> None:
    exchange(client, "/1 1 05 get pos")
    exchange(client, "/1 0")
    assert simulator.requests == ["get pos", ""]


def test_close_stops_thread_and_is_idempotent() -> None:
    sim = StageSimulator().start()
    assert sim.is_serving
    sim.close()
    sim.close()
    assert not sim.is_serving
    assert sim.pty_path == ""
