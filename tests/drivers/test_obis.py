"""Tests of the OBIS laser driver against the simulated laser on real transports, and pyvisa-sim.

Fault injection, reconnects and timing bounds are in test_obis_faults.py.
"""

from __future__ import annotations

import math
import socket
import time
from types import SimpleNamespace

import pytest
import pyvisa
import serial

from fluoscan.acquisition.config import parse_config
from fluoscan.drivers import DeviceError, DeviceUnavailable, Laser
from fluoscan.drivers.obis import ObisLaser, open_obis_laser
from fluoscan.drivers.obis_scpi import ObisStatus
from fluoscan.simulators.laser import (
    PYVISA_SIM_YAML,
    LaserPtyServer,
    LaserTcpServer,
    LaserTransport,
    ObisSimulator,
)

# Long enough that a loaded test machine never hits it; test_obis_faults.py tests the timeouts.
TIMEOUT_S = 2.0
# Allowance for thread scheduling and pyvisa overhead on a loaded machine.
MARGIN_S = 1.0


def make_server(transport: LaserTransport, device: ObisSimulator) -> LaserTcpServer | LaserPtyServer:
    if transport is LaserTransport.TCP:
        return LaserTcpServer(device)
    return LaserPtyServer(device)


def open_laser(server, **options) -> ObisLaser:
    options = {"wavelength_nm": 690.0, "timeout_s": TIMEOUT_S, "emission_timeout_s": 2.0} | options
    return ObisLaser(server.resource, **options)


def raw_tcp_query(port: int, request: str) -> list[str]:
    """Ask one query over a plain socket, without any fluoscan code, and return its two reply lines."""
    with socket.create_connection(("127.0.0.1", port), timeout=2.0) as client:
        client.sendall(request.encode("ascii") + b"\r\n")
        received = b""
        while received.count(b"\r\n") < 2:
            chunk = client.recv(4096)
            if not chunk:
                break
            received += chunk
    return received.decode("ascii").split("\r\n")[:2]


def raw_query(server, request: str) -> list[str]:
    """Ask one query with a plain socket or pyserial, without any fluoscan code."""
    if isinstance(server, LaserTcpServer):
        return raw_tcp_query(server.port, request)
    with serial.Serial(server.path, 115200, timeout=2.0) as port:
        port.write(request.encode("ascii") + b"\r\n")
        return [port.read_until(b"\r\n").decode("ascii").removesuffix("\r\n") for _ in range(2)]


@pytest.fixture(params=list(LaserTransport), ids=lambda transport: transport.value)
def server(request):
    with make_server(request.param, ObisSimulator(time_scale=0.0)) as simulator:
        yield simulator


@pytest.fixture
def laser(server):
    with open_laser(server) as driver:
        yield driver


def test_open_reads_identity(laser):
    assert laser.identity() == "Coherent, Inc - OBIS 690nm 100mW LX - V1.1 (simulated)"
    assert laser.wavelength_nm() == 690.0
    assert laser.power_limits_mw() == (1.0, 100.0)


def test_driver_is_a_laser(laser):
    assert isinstance(laser, Laser)


def test_open_switches_emission_off(server):
    server.device.handle("SOUR:AM:STAT ON")
    assert server.device.emission

    with open_laser(server):
        assert not server.device.emission


def test_open_switches_handshake_on(server):
    server.device.handle("SYST:COMM:HAND OFF")

    with open_laser(server) as laser:
        assert server.device.handshake
        assert laser.query("SYST:COMM:HAND?") == "ON"


def test_open_clears_stale_errors(server):
    server.device.handle("BOGUS")

    with open_laser(server) as laser:
        assert laser.read_errors() == []


@pytest.mark.parametrize(
    ("reported_nm", "tolerance_nm", "accepted"),
    [(690.0, 5.0, True), (694.0, 5.0, True), (686.0, 5.0, True), (785.0, 5.0, False), (692.0, 1.0, False)],
)
def test_wavelength_check(reported_nm, tolerance_nm, accepted):
    with LaserTcpServer(ObisSimulator(wavelength_nm=reported_nm)) as server:
        if accepted:
            with open_laser(server, wavelength_tolerance_nm=tolerance_nm) as laser:
                assert laser.wavelength_nm() == reported_nm
        else:
            with pytest.raises(DeviceError) as caught:
                open_laser(server, wavelength_tolerance_nm=tolerance_nm)
            message = str(caught.value)
            assert f"{reported_nm:g} nm" in message
            assert "690 nm" in message
            assert "laser.wavelength_nm" in message


def test_wavelength_mismatch_releases_port():
    with LaserTcpServer(ObisSimulator(wavelength_nm=785.0)) as server:
        with pytest.raises(DeviceError):
            open_laser(server)
        # The server takes one client at a time, so this only gets a reply if the driver let go.
        assert raw_tcp_query(server.port, "SYST:INF:WAV?") == ["785", "OK"]


@pytest.mark.parametrize("power_mw", [40.0, 1.0, 100.0, 12.345])
def test_power_setpoint_round_trip(laser, power_mw):
    laser.set_power_mw(power_mw)

    assert laser.power_setpoint_mw() == pytest.approx(power_mw)


@pytest.mark.parametrize("power_mw", [0.5, 100.5, -1.0, math.nan, math.inf])
def test_power_out_of_range_not_sent(server, laser, mocker, power_mw):
    handle = mocker.spy(server.device, "handle")

    with pytest.raises(DeviceError) as caught:
        laser.set_power_mw(power_mw)

    message = str(caught.value)
    assert "laser.power_mw" in message
    assert "1 to 100 mW" in message
    assert f"{power_mw:g} mW" in message
    assert handle.call_count == 0


def test_measured_power_follows_emission(server, laser):
    laser.set_power_mw(25.0)
    assert laser.power_mw() == 0.0

    laser.set_emission(True)
    assert laser.power_mw() == pytest.approx(25.0)
    laser.set_emission(False)
    assert laser.power_mw() == 0.0


def test_emission_on_and_off(server, laser):
    laser.set_emission(True)
    assert laser.emission()
    assert server.device.emission

    laser.set_emission(False)
    assert not laser.emission()
    assert not server.device.emission


@pytest.mark.parametrize(
    ("blocker", "words"),
    [("interlock_closed", "interlock open"), ("key_on", "key switch off")],
)
def test_emission_rejected_when_blocked(server, laser, mocker, blocker, words):
    setattr(server.device, blocker, False)
    handle = mocker.spy(server.device, "handle")

    assert not laser.interlock_closed()
    with pytest.raises(DeviceError, match=words):
        laser.set_emission(True)
    assert not server.device.emission
    assert "SOUR:AM:STAT ON" not in [call.args[0] for call in handle.call_args_list]


def test_interlock_closed(laser):
    assert laser.interlock_closed()


def test_status_word(server, laser):
    laser.set_emission(True)

    assert laser.status() == ObisStatus.EMISSION | ObisStatus.READY | ObisStatus.WARMED_UP


def test_device_error_names_command_and_code(laser):
    with pytest.raises(DeviceError) as caught:
        laser.command("SOUR:POW:LEV:IMM:AMPL 0.5")

    message = str(caught.value)
    assert "SOUR:POW:LEV:IMM:AMPL 0.5" in message
    assert "ERR-220" in message
    assert "out of range" in message


def test_error_reply_empties_queue(server, laser):
    with pytest.raises(DeviceError, match="ERR-100"):
        laser.query("NOT:A:COMMAND?")

    assert server.device.handle("SYST:ERR:COUN?") == ["0", "OK"]


def test_read_errors_on_demand(server, laser):
    server.device.handle("BOGUS")
    server.device.handle("SOUR:POW:LEV:IMM:AMPL 9")

    errors = laser.read_errors()
    assert [code for code, _ in errors] == [100, 220]
    assert laser.read_errors() == []


def test_emission_off_seen_by_raw_client(server):
    with open_laser(server) as laser:
        laser.set_emission(True)
        assert server.device.emission
        laser.set_emission(False)

    assert raw_query(server, "SOURce:AM:STATe?") == ["OFF", "OK"]


def test_close_keeps_emission(server):
    laser = open_laser(server)
    laser.set_emission(True)
    laser.close()
    laser.close()

    assert server.device.emission


def test_calls_after_close_fail(server):
    laser = open_laser(server)
    laser.close()

    with pytest.raises(DeviceError, match="closed"):
        laser.emission()
    with pytest.raises(DeviceError, match="closed"):
        laser.set_emission(False)


# Opening from a configuration


def test_factory_requires_resource():
    context = SimpleNamespace(config=parse_config({"laser": {"driver": "obis"}}))

    with pytest.raises(DeviceUnavailable, match="laser.resource"):
        open_obis_laser(context)


def test_factory_opens_configured_resource():
    with LaserTcpServer(ObisSimulator(time_scale=0.0)) as server:
        config = parse_config({"laser": {"driver": "obis", "resource": server.resource, "timeout_s": TIMEOUT_S}})
        with open_obis_laser(SimpleNamespace(config=config)) as laser:
            assert laser.resource_name == server.resource
            assert laser.timeout_s == TIMEOUT_S


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize(
    "resource",
    [
        f"TCPIP::127.0.0.1::{unused_port()}::SOCKET",
        "ASRL/dev/fluoscan-no-such-port::INSTR",
        "not a resource",
    ],
    ids=["refused", "no-port", "malformed"],
)
def test_unavailable_resource(resource):
    started = time.monotonic()
    with pytest.raises(DeviceUnavailable) as caught:
        ObisLaser(resource, wavelength_nm=690.0, timeout_s=TIMEOUT_S)

    assert resource in str(caught.value)
    assert time.monotonic() - started < TIMEOUT_S + MARGIN_S


# pyvisa-sim


@pytest.fixture
def sim_manager():
    manager = pyvisa.ResourceManager(f"{PYVISA_SIM_YAML}@sim")
    yield manager
    manager.close()


@pytest.mark.parametrize("resource", ["ASRL1::INSTR", "TCPIP::127.0.0.1::5025::SOCKET"])
def test_pyvisa_sim_identity_power_emission(sim_manager, resource):
    with ObisLaser(resource, wavelength_nm=690.0, timeout_s=0.5, resource_manager=sim_manager) as laser:
        assert "OBIS 690nm" in laser.identity()
        assert laser.power_limits_mw() == (1.0, 100.0)
        laser.set_power_mw(40.0)
        assert laser.power_setpoint_mw() == pytest.approx(40.0)
        laser.set_emission(True)
        assert laser.emission()
        laser.set_emission(False)
        assert not laser.emission()


def test_pyvisa_sim_long_form_unrecognised(sim_manager):
    # pyvisa-sim matches exact strings, so only the simulator module accepts long forms.
    with ObisLaser("ASRL1::INSTR", wavelength_nm=690.0, timeout_s=0.5, resource_manager=sim_manager) as laser:
        with pytest.raises(DeviceError, match="ERR-100"):
            laser.query("SYSTem:INFormation:WAVelength?")


def test_pyvisa_sim_keeps_manager_open(sim_manager):
    laser = ObisLaser("ASRL1::INSTR", wavelength_nm=690.0, timeout_s=0.5, resource_manager=sim_manager)
    laser.close()

    with ObisLaser("ASRL1::INSTR", wavelength_nm=690.0, timeout_s=0.5, resource_manager=sim_manager) as again:
        assert again.wavelength_nm() == 690.0
