"""Tests of the simulated OBIS laser: the device model, and raw clients on its real transports.

The raw clients (a plain socket, pyserial on the pseudo-terminal) use no fluoscan driver code, so
these tests check the wire protocol itself.
"""

from __future__ import annotations

import socket
import time

import pytest
import serial

from fluoscan.acquisition.config import parse_config
from fluoscan.acquisition.devices import DeviceContext, open_device
from fluoscan.drivers.obis import ObisLaser
from fluoscan.drivers.obis_scpi import ObisStatus
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.simulators.laser import (
    LaserPtyServer,
    LaserTcpServer,
    LaserTransport,
    ObisSimulator,
    open_simulated_laser,
    serve_laser,
)

REPLY_TIMEOUT_S = 2.0


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class RawClient:
    """A line client over a plain socket or pyserial, with no fluoscan code."""

    def __init__(self, server: LaserTcpServer | LaserPtyServer, timeout_s: float = REPLY_TIMEOUT_S) -> None:
        if isinstance(server, LaserTcpServer):
            self._socket = socket.create_connection(("127.0.0.1", server.port), timeout=timeout_s)
            self._serial = None
        else:
            self._socket = None
            self._serial = serial.Serial(server.path, 115200, timeout=timeout_s)
        self._buffer = b""

    def send(self, data: bytes) -> None:
        if self._socket is not None:
            self._socket.sendall(data)
        else:
            self._serial.write(data)

    def read_line(self) -> bytes:
        """Return one reply line without its CR LF, or raise TimeoutError if none arrives."""
        if self._serial is not None:
            line = self._serial.read_until(b"\r\n")
            if not line.endswith(b"\r\n"):
                raise TimeoutError(f"no complete line, got {line!r}")
            return line[:-2]
        while b"\r\n" not in self._buffer:
            chunk = self._socket.recv(4096)
            if not chunk:
                raise ConnectionError("server closed the connection")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\r\n")
        return line

    def ask(self, request: str, lines: int = 2) -> list[str]:
        self.send(request.encode("ascii") + b"\r\n")
        return [self.read_line().decode("ascii") for _ in range(lines)]

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
        else:
            self._serial.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


@pytest.fixture(params=list(LaserTransport), ids=lambda transport: transport.value)
def server(request):
    device = ObisSimulator(time_scale=0.0)
    if request.param is LaserTransport.TCP:
        simulator = LaserTcpServer(device)
    else:
        simulator = LaserPtyServer(device)
    with simulator:
        yield simulator


# The device model


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        ("*IDN?", ["Coherent, Inc - OBIS 690nm 100mW LX - V1.1 (simulated)", "OK"]),
        ("*idn?", ["Coherent, Inc - OBIS 690nm 100mW LX - V1.1 (simulated)", "OK"]),
        ("SYST:INF:WAV?", ["690", "OK"]),
        ("SYSTem:INFormation:WAVelength?", ["690", "OK"]),
        ("system:information:wavelength?", ["690", "OK"]),
        (":SYST1:INF:WAV?", ["690", "OK"]),
        ("SYST:INF:POW?", ["0.10000", "OK"]),
        ("SYST:INF:SNUM?", ["SIM690-0001", "OK"]),
        ("SYST:INF:FVER?", ["1.1.0-sim", "OK"]),
        ("SOUR:AM:STAT?", ["OFF", "OK"]),
        ("SOURce1:AM:STATe?", ["OFF", "OK"]),
        ("SOUR:AM?", ["OFF", "OK"]),
        ("SOUR:POW:LIM:LOW?", ["0.001000", "OK"]),
        ("SOURce:POWer:LIMit:HIGH?", ["0.100000", "OK"]),
        ("SOUR:POW:LEV:IMM:AMPL?", ["0.001000", "OK"]),
        ("SOUR:POW:LEV:AMPL?", ["0.001000", "OK"]),
        ("SOUR:POW:LEV?", ["0.000000", "OK"]),
        ("SYST:LOCK?", ["OK", "OK"]),
        ("SYST:CDRH?", ["ON", "OK"]),
        ("SYST:COMM:HAND?", ["ON", "OK"]),
        ("SYST:ERR:COUN?", ["0", "OK"]),
        ("SYST:ERR:NEXT?", ['0,"No error"', "OK"]),
        ("SYST:STAT?", ["00000104", "OK"]),
        ("SYST:CDRH OFF", ["OK"]),
        ("SOUR:POW:LEV:IMM:AMPL 0.05", ["OK"]),
        ("SOUR:POW:LEV 0.05", ["OK"]),
        ("SOURce:POWer:LEVel:IMMediate:AMPLitude 0.05", ["OK"]),
        ("BOGUS?", ["ERR-100"]),
        ("SOURC:AM:STAT?", ["ERR-100"]),
        ("SYST:INF:WAV 700", ["ERR-100"]),
        ("SOUR:POW:LEV:IMM:AMPL 0.5", ["ERR-220"]),
        ("SOUR:POW:LEV:IMM:AMPL lots", ["ERR-102"]),
        ("SOUR:POW:LEV:IMM:AMPL", ["ERR-109"]),
        ("SOUR:AM:STAT MAYBE", ["ERR-220"]),
    ],
)
def test_model_replies(request_line, expected):
    assert ObisSimulator().handle(request_line) == expected


@pytest.mark.parametrize(
    ("request_line", "code"),
    [("BOGUS", 100), ("SOUR:POW:LEV:IMM:AMPL 1", 220), ("SOUR:POW:LEV:IMM:AMPL", 109)],
)
def test_model_error_queue(request_line, code):
    device = ObisSimulator()
    device.handle(request_line)

    assert device.handle("SYST:ERR:COUN?") == ["1", "OK"]
    assert ObisStatus.ERROR_QUEUED in device.status_word()
    assert device.handle("SYST:ERR:NEXT?")[0].startswith(f"{code},")
    assert device.handle("SYST:ERR:COUN?") == ["0", "OK"]


def test_model_error_clear():
    device = ObisSimulator()
    device.handle("BOGUS")
    device.handle("BOGUS")

    assert device.handle("SYST:ERR:CLE") == ["OK"]
    assert device.handle("SYST:ERR:COUN?") == ["0", "OK"]


def test_model_power_out_of_range_kept():
    device = ObisSimulator()
    device.handle("SOUR:POW:LEV:IMM:AMPL 0.04")
    device.handle("SOUR:POW:LEV:IMM:AMPL 0.2")

    assert device.power_setpoint_mw == pytest.approx(40.0)


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [("SYST:INF:WAV?", ["690"]), ("SYST:CDRH OFF", []), ("BOGUS", ["ERR-100"])],
)
def test_model_handshake_off(request_line, expected):
    device = ObisSimulator()
    assert device.handle("SYST:COMM:HAND OFF") == []

    assert device.handle(request_line) == expected


def test_model_handshake_on_replies_ok():
    device = ObisSimulator()
    device.handle("SYST:COMM:HAND OFF")

    assert device.handle("SYST:COMM:HAND ON") == ["OK"]


def test_model_cdrh_delay():
    clock = FakeClock()
    device = ObisSimulator(time_scale=0.5, clock=clock)
    device.handle("SOUR:POW:LEV:IMM:AMPL 0.04")
    device.handle("SOUR:AM:STAT ON")

    clock.now_s += 2.4
    assert device.handle("SOUR:AM:STAT?") == ["OFF", "OK"]
    assert ObisStatus.CDRH_DELAY in device.status_word()
    assert device.measured_power_mw == 0.0
    clock.now_s += 0.1
    assert device.handle("SOUR:AM:STAT?") == ["ON", "OK"]
    assert ObisStatus.EMISSION in device.status_word()
    assert device.handle("SOUR:POW:LEV?") == ["0.040000", "OK"]


def test_model_cdrh_off_is_immediate():
    device = ObisSimulator(time_scale=1.0, clock=FakeClock())
    device.handle("SYST:CDRH OFF")
    device.handle("SOUR:AM:STAT ON")

    assert device.emission


def test_model_off_cancels_pending_emission():
    clock = FakeClock()
    device = ObisSimulator(time_scale=1.0, clock=clock)
    device.handle("SOUR:AM:STAT ON")
    device.handle("SOUR:AM:STAT OFF")
    clock.now_s += 10.0

    assert not device.emission


@pytest.mark.parametrize("blocker", ["interlock_closed", "key_on"])
def test_model_blocker_rejects_emission(blocker):
    device = ObisSimulator(time_scale=0.0)
    setattr(device, blocker, False)

    assert device.handle("SOUR:AM:STAT ON") == ["ERR-200"]
    assert not device.emission


@pytest.mark.parametrize("blocker", ["interlock_closed", "key_on"])
def test_model_blocker_stops_emission(blocker):
    device = ObisSimulator(time_scale=0.0)
    device.handle("SOUR:AM:STAT ON")
    setattr(device, blocker, False)
    setattr(device, blocker, True)

    assert not device.emission


@pytest.mark.parametrize(
    ("interlock_closed", "key_on", "lock_reply", "status"),
    [
        (True, True, "OK", ObisStatus.READY | ObisStatus.WARMED_UP),
        (False, True, "OFF", ObisStatus.WARMED_UP),
        (True, False, "OK", ObisStatus.STANDBY | ObisStatus.WARMED_UP),
    ],
)
def test_model_interlock_and_key(interlock_closed, key_on, lock_reply, status):
    device = ObisSimulator()
    device.interlock_closed = interlock_closed
    device.key_on = key_on

    assert device.handle("SYST:LOCK?") == [lock_reply, "OK"]
    assert device.status_word() == status


def test_model_reset():
    device = ObisSimulator(time_scale=0.0)
    device.handle("SOUR:POW:LEV:IMM:AMPL 0.05")
    device.handle("SOUR:AM:STAT ON")
    device.handle("*RST")

    assert not device.emission
    assert device.power_setpoint_mw == pytest.approx(1.0)


# Raw clients on the real transports


@pytest.mark.parametrize(
    ("request_line", "expected"),
    [
        ("*IDN?", ["Coherent, Inc - OBIS 690nm 100mW LX - V1.1 (simulated)", "OK"]),
        ("SYST:INF:WAV?", ["690", "OK"]),
        ("SOURce:AM:STATe?", ["OFF", "OK"]),
        ("sour:am:stat?", ["OFF", "OK"]),
    ],
)
def test_raw_client_queries(server, request_line, expected):
    with RawClient(server) as client:
        assert client.ask(request_line) == expected


def test_raw_client_unknown_command(server):
    with RawClient(server) as client:
        assert client.ask("FOO:BAR?", lines=1) == ["ERR-100"]
        assert client.ask("SYST:ERR:NEXT?") == ['100,"unrecognized command or query"', "OK"]


def test_raw_client_emission_state(server):
    with RawClient(server) as client:
        assert client.ask("SOUR:AM:STAT ON", lines=1) == ["OK"]
        assert client.ask("SOUR:AM:STAT?") == ["ON", "OK"]
        assert server.device.emission


@pytest.mark.parametrize("terminator", [b"\r\n", b"\r", b"\n"], ids=["crlf", "cr", "lf"])
def test_raw_client_terminators(server, terminator):
    with RawClient(server) as client:
        client.send(b"SYST:INF:WAV?" + terminator + b"*IDN?" + terminator)
        assert client.read_line() == b"690"
        assert client.read_line() == b"OK"
        assert client.read_line().startswith(b"Coherent")


def test_raw_client_split_request(server):
    with RawClient(server) as client:
        for byte in b"SYST:INF:WAV?\r\n":
            client.send(bytes([byte]))
        assert client.read_line() == b"690"


def test_tcp_accepts_new_client_after_close():
    with LaserTcpServer(ObisSimulator()) as server:
        with RawClient(server) as first:
            assert first.ask("SYST:INF:WAV?")[0] == "690"
        with RawClient(server) as second:
            assert second.ask("SYST:INF:WAV?")[0] == "690"


def test_tcp_listens_on_loopback_only():
    with LaserTcpServer(ObisSimulator()) as server:
        assert server._listener.getsockname()[0] == "127.0.0.1"
        assert server.resource == f"TCPIP::127.0.0.1::{server.port}::SOCKET"


def test_tcp_stop_closes_port():
    server = LaserTcpServer(ObisSimulator()).start()
    port = server.port
    server.stop()
    server.stop()

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S)


def test_pty_resource_names_path():
    with LaserPtyServer(ObisSimulator()) as server:
        assert server.resource == f"ASRL{server.path}::INSTR"
        assert server.path.startswith("/dev/")


# Faults on the wire


def test_fault_timeout_sends_nothing(server):
    server.faults.add(Fault(FaultKind.TIMEOUT, command="SYST:INF:WAV?"))
    with RawClient(server, timeout_s=0.3) as client:
        client.send(b"SYST:INF:WAV?\r\n")
        with pytest.raises(TimeoutError):
            client.read_line()
        assert client.ask("SOUR:AM:STAT?") == ["OFF", "OK"]


def test_fault_late_reply(server):
    server.faults.add(Fault(FaultKind.LATE, command="*IDN?", delay_s=0.3))
    with RawClient(server) as client:
        started = time.monotonic()
        reply = client.ask("*IDN?")
        elapsed_s = time.monotonic() - started

    assert reply[1] == "OK"
    assert elapsed_s >= 0.3


def test_fault_garble(server):
    server.faults.add(Fault(FaultKind.GARBLE, command="SYST:INF:WAV?"))
    with RawClient(server) as client:
        client.send(b"SYST:INF:WAV?\r\n")
        line = client.read_line()

    assert not line.isascii()


def test_fault_reject(server):
    server.faults.add(Fault(FaultKind.REJECT, command="SOUR:AM:STAT ON"))
    with RawClient(server) as client:
        assert client.ask("SOUR:AM:STAT ON", lines=1) == ["ERR-200"]
        assert not server.device.emission


def test_fault_stall_keeps_state(server):
    server.faults.add(Fault(FaultKind.STALL, command="SOUR:AM:STAT ON"))
    with RawClient(server) as client:
        assert client.ask("SOUR:AM:STAT ON", lines=1) == ["OK"]
        assert client.ask("SOUR:AM:STAT?") == ["OFF", "OK"]


def test_fault_disconnect_tcp_then_reconnect():
    with LaserTcpServer(ObisSimulator(), faults=[Fault(FaultKind.DISCONNECT, command="*IDN?")]) as server:
        with RawClient(server) as client:
            client.send(b"*IDN?\r\n")
            with pytest.raises(ConnectionError):
                client.read_line()
        with RawClient(server) as client:
            assert client.ask("*IDN?")[1] == "OK"


def test_fault_disconnect_pty_moves_path():
    with LaserPtyServer(ObisSimulator(), faults=[Fault(FaultKind.DISCONNECT, command="*IDN?")]) as server:
        old_path = server.path
        with RawClient(server) as client:
            client.send(b"*IDN?\r\n")
            with pytest.raises(serial.SerialException):
                client.read_line()
        assert server.path != old_path
        with RawClient(server) as client:
            assert client.ask("*IDN?")[1] == "OK"


# Factories


def test_serve_laser_uses_config():
    config = parse_config({"laser": {"wavelength_nm": 785.0}, "simulation": {"time_scale": 0.5}})
    with serve_laser(config) as server:
        assert server.device.wavelength_nm == 785.0
        assert server.device.cdrh_delay_s == pytest.approx(2.5)
        with RawClient(server) as client:
            assert client.ask("SYST:INF:WAV?") == ["785", "OK"]


def test_serve_laser_pty():
    with serve_laser(transport=LaserTransport.PTY) as server:
        assert server.resource.startswith("ASRL/dev/")
        with RawClient(server) as client:
            assert client.ask("SYST:INF:WAV?") == ["690", "OK"]


def test_open_simulated_laser_stops_with_stack():
    config = parse_config({"laser": {"driver": "simulated"}})
    context = DeviceContext(config=config, options={"laser_faults": [Fault(FaultKind.REJECT, command="SYST:CDRH?")]})
    with context.stack:
        with open_simulated_laser(context) as laser:
            server = context.options["laser_server"]
            assert isinstance(laser, ObisLaser)
            assert laser.identity().startswith("Coherent")
            assert server.faults.faults[0].command == "SYST:CDRH?"
            port = server.port

    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT_S)


def test_registry_opens_simulated_laser():
    config = parse_config({"laser": {"driver": "simulated", "wavelength_nm": 700.0}})
    context = DeviceContext(config=config)
    with context.stack:
        with open_device("laser", context) as laser:
            assert isinstance(laser, ObisLaser)
            assert laser.wavelength_nm() == 700.0
