"""Fault handling of the OBIS laser driver: each injected fault gives the right error, in bounded time.

Faults are added after the driver has opened, so that they fire on the call under test and not on
the commands sent while opening.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest

from fluoscan.drivers import DeviceDisconnected, DeviceError, DeviceProtocolError, DeviceTimeout
from fluoscan.drivers.obis import ObisLaser
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.simulators.laser import LaserPtyServer, LaserTcpServer, LaserTransport, ObisSimulator

TIMEOUT_S = 0.3
EMISSION_TIMEOUT_S = 0.4
# Allowance for thread scheduling and pyvisa overhead on a loaded machine.
MARGIN_S = 1.0

SETPOINT_QUERY = "SOUR:POW:LEV:IMM:AMPL?"
SETPOINT_COMMAND = "SOUR:POW:LEV:IMM:AMPL 0"
EMISSION_ON = "SOUR:AM:STAT ON"
EMISSION_OFF = "SOUR:AM:STAT OFF"


def make_server(transport: LaserTransport, device: ObisSimulator) -> LaserTcpServer | LaserPtyServer:
    if transport is LaserTransport.TCP:
        return LaserTcpServer(device)
    return LaserPtyServer(device)


def open_laser(server) -> ObisLaser:
    return ObisLaser(
        server.resource, wavelength_nm=690.0, timeout_s=TIMEOUT_S, emission_timeout_s=EMISSION_TIMEOUT_S
    )


@dataclass(frozen=True)
class Case:
    """One fault, the call it hits, the error expected (None: the driver recovers) and the time allowed."""

    fault: Fault
    call: str
    error: type[Exception] | None
    allowed_s: float


def run_call(laser: ObisLaser, call: str) -> None:
    if call == "query":
        laser.power_setpoint_mw()
    elif call == "set":
        laser.set_power_mw(20.0)
    elif call == "on":
        laser.set_emission(True)
    elif call == "off":
        laser.set_emission(True)
        laser.set_emission(False)
    else:
        raise ValueError(f"unknown call {call!r}")


CASES = {
    "timeout-query": Case(Fault(FaultKind.TIMEOUT, SETPOINT_QUERY), "query", DeviceTimeout, TIMEOUT_S),
    "timeout-set": Case(Fault(FaultKind.TIMEOUT, SETPOINT_COMMAND), "set", DeviceTimeout, TIMEOUT_S),
    "late-within-timeout": Case(Fault(FaultKind.LATE, SETPOINT_QUERY, delay_s=TIMEOUT_S / 2), "query", None, TIMEOUT_S),
    "late-beyond-timeout": Case(
        Fault(FaultKind.LATE, SETPOINT_QUERY, delay_s=TIMEOUT_S * 1.5), "query", DeviceTimeout, TIMEOUT_S
    ),
    "garble-query-once": Case(Fault(FaultKind.GARBLE, SETPOINT_QUERY), "query", None, 2 * TIMEOUT_S),
    "garble-query-always": Case(
        Fault(FaultKind.GARBLE, SETPOINT_QUERY, repeat=True), "query", DeviceProtocolError, 2 * TIMEOUT_S
    ),
    "garble-set": Case(Fault(FaultKind.GARBLE, SETPOINT_COMMAND), "set", DeviceProtocolError, TIMEOUT_S),
    "reject-set": Case(Fault(FaultKind.REJECT, SETPOINT_COMMAND), "set", DeviceError, TIMEOUT_S),
    "reject-on": Case(Fault(FaultKind.REJECT, EMISSION_ON), "on", DeviceError, TIMEOUT_S),
    "stall-on": Case(Fault(FaultKind.STALL, EMISSION_ON), "on", DeviceTimeout, EMISSION_TIMEOUT_S + TIMEOUT_S),
    "stall-off-once": Case(Fault(FaultKind.STALL, EMISSION_OFF), "off", None, 2 * TIMEOUT_S),
    "stall-off-always": Case(Fault(FaultKind.STALL, EMISSION_OFF, repeat=True), "off", DeviceError, 3 * TIMEOUT_S),
    "timeout-off-once": Case(Fault(FaultKind.TIMEOUT, EMISSION_OFF), "off", None, 2 * TIMEOUT_S),
    "timeout-off-always": Case(
        Fault(FaultKind.TIMEOUT, EMISSION_OFF, repeat=True), "off", DeviceTimeout, 3 * TIMEOUT_S
    ),
}

# A TCP server accepts the reconnect, but a hung-up pseudo-terminal is gone, so reconnecting fails.
DISCONNECT_CASES = {
    (LaserTransport.TCP, "once"): Case(Fault(FaultKind.DISCONNECT, SETPOINT_QUERY), "query", None, 2 * TIMEOUT_S),
    (LaserTransport.TCP, "always"): Case(
        Fault(FaultKind.DISCONNECT, SETPOINT_QUERY, repeat=True), "query", DeviceDisconnected, 2 * TIMEOUT_S
    ),
    (LaserTransport.TCP, "off-always"): Case(
        Fault(FaultKind.DISCONNECT, EMISSION_OFF, repeat=True), "off", DeviceDisconnected, 4 * TIMEOUT_S
    ),
    (LaserTransport.PTY, "once"): Case(
        Fault(FaultKind.DISCONNECT, SETPOINT_QUERY), "query", DeviceDisconnected, 2 * TIMEOUT_S
    ),
}


def check_case(server, case: Case) -> ObisLaser:
    """Open a laser, inject the case's fault, run its call and check the outcome and the time taken."""
    laser = open_laser(server)
    server.faults.add(case.fault)
    started = time.monotonic()
    if case.error is None:
        run_call(laser, case.call)
    else:
        with pytest.raises(case.error) as caught:
            run_call(laser, case.call)
        assert "OBIS laser" in str(caught.value)
    assert time.monotonic() - started <= case.allowed_s + MARGIN_S
    return laser


@pytest.mark.parametrize("transport", list(LaserTransport), ids=lambda transport: transport.value)
@pytest.mark.parametrize("name", list(CASES))
def test_fault(transport, name):
    with make_server(transport, ObisSimulator(time_scale=0.0)) as server:
        laser = check_case(server, CASES[name])
        with laser:
            # Whatever the fault, the driver is usable again once the laser behaves.
            server.faults.faults.clear()
            laser.set_power_mw(30.0)
            assert laser.power_setpoint_mw() == pytest.approx(30.0)


@pytest.mark.parametrize(("transport", "name"), list(DISCONNECT_CASES), ids=lambda value: str(getattr(value, "value", value)))
def test_fault_disconnect(transport, name):
    with make_server(transport, ObisSimulator(time_scale=0.0)) as server:
        check_case(server, DISCONNECT_CASES[transport, name]).close()


def test_reject_names_command_and_code():
    with LaserTcpServer(ObisSimulator(time_scale=0.0)) as server, open_laser(server) as laser:
        server.faults.add(Fault(FaultKind.REJECT, EMISSION_ON))
        with pytest.raises(DeviceError) as caught:
            laser.set_emission(True)

    message = str(caught.value)
    assert EMISSION_ON in message
    assert "ERR-200" in message


def test_failed_emission_on_is_cancelled():
    with LaserTcpServer(ObisSimulator(time_scale=0.0)) as server, open_laser(server) as laser:
        server.faults.add(Fault(FaultKind.STALL, EMISSION_ON))
        with pytest.raises(DeviceTimeout):
            laser.set_emission(True)
        assert not server.device.emission
        assert not server.device.emission_pending


def test_emission_off_failure_says_emission_may_be_on():
    with LaserTcpServer(ObisSimulator(time_scale=0.0)) as server, open_laser(server) as laser:
        laser.set_emission(True)
        server.faults.add(Fault(FaultKind.STALL, EMISSION_OFF, repeat=True))
        with pytest.raises(DeviceError, match="emission may still be ON"):
            laser.set_emission(False)
        assert server.device.emission


def test_late_reply_not_taken_for_next():
    with LaserTcpServer(ObisSimulator(time_scale=0.0)) as server, open_laser(server) as laser:
        server.faults.add(Fault(FaultKind.LATE, "SOUR:POW:LIM:HIGH?", delay_s=TIMEOUT_S * 1.5))
        with pytest.raises(DeviceTimeout):
            laser.query("SOUR:POW:LIM:HIGH?")

        assert laser.query("SOUR:POW:LIM:LOW?") == "0.001000"
        assert laser.query("SOUR:POW:LIM:HIGH?") == "0.100000"


# Reconnecting


def test_reconnect_after_each_drop():
    with LaserTcpServer(ObisSimulator(time_scale=0.0)) as server, open_laser(server) as laser:
        server.faults.add(Fault(FaultKind.DISCONNECT, SETPOINT_QUERY, occurrence=1))
        server.faults.add(Fault(FaultKind.DISCONNECT, SETPOINT_QUERY, occurrence=3))
        laser.set_power_mw(40.0)

        readings_mw = [laser.power_setpoint_mw() for _ in range(3)]

        assert readings_mw == pytest.approx([40.0, 40.0, 40.0])
        assert server.connection_count == 3


def test_server_gone_then_back():
    server = LaserTcpServer(ObisSimulator(time_scale=0.0)).start()
    port = server.port
    laser = open_laser(server)
    server.stop()

    started = time.monotonic()
    with pytest.raises(DeviceDisconnected):
        laser.emission()
    assert time.monotonic() - started <= 2 * TIMEOUT_S + MARGIN_S

    with LaserTcpServer(ObisSimulator(time_scale=0.0), port=port) as restarted, laser:
        assert not laser.emission()
        assert restarted.connection_count == 1


# The CDRH emission delay


@pytest.mark.parametrize("transport", list(LaserTransport), ids=lambda transport: transport.value)
def test_cdrh_delay_honoured(transport):
    device = ObisSimulator(time_scale=0.1)
    with make_server(transport, device) as server, open_laser(server) as laser:
        laser.emission_timeout_s = 2.0
        started = time.monotonic()
        laser.set_emission(True)
        elapsed_s = time.monotonic() - started

        assert device.emission
        assert elapsed_s >= device.cdrh_delay_s
        assert elapsed_s <= device.cdrh_delay_s + MARGIN_S


def test_cdrh_off_no_delay():
    device = ObisSimulator(time_scale=1.0)
    with LaserTcpServer(device) as server, open_laser(server) as laser:
        laser.command("SYST:CDRH OFF")
        started = time.monotonic()
        laser.set_emission(True)

        assert time.monotonic() - started < device.cdrh_delay_s
        assert device.emission


def test_cdrh_delay_bounded_by_emission_timeout():
    device = ObisSimulator(time_scale=1.0)
    with LaserTcpServer(device) as server, open_laser(server) as laser:
        started = time.monotonic()
        with pytest.raises(DeviceTimeout, match="emission_timeout_s"):
            laser.set_emission(True)

        assert time.monotonic() - started <= EMISSION_TIMEOUT_S + TIMEOUT_S + MARGIN_S
        assert not device.emission_pending
        assert not device.emission
