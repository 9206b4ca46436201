"""A simulated Coherent OBIS laser that speaks OBIS SCPI on a TCP socket or a pseudo-terminal.

:class:`ObisSimulator` is the device: identity, wavelength, power setpoint and limits, emission
with the CDRH delay, interlock and key switch, error queue and handshaking. It accepts short and
long SCPI forms in any case (``SOUR:AM:STAT`` and ``source1:am:state``), optional nodes such as
``[:IMMediate]``, and lines ended by ``\\r\\n``, ``\\r`` or ``\\n``. Command names match
:class:`fluoscan.drivers.obis_scpi.Command`.

:class:`LaserTcpServer` and :class:`LaserPtyServer` serve one simulator in a thread, inject the
faults of a :class:`~fluoscan.simulators.faults.FaultPlan`, and give the VISA resource to connect
to. :func:`serve_laser` starts one from a configuration; :func:`open_simulated_laser` is the
``simulated`` laser factory. ``obis-sim.yaml`` next to this module describes the same laser for
pyvisa-sim (exact command strings only).
"""

from __future__ import annotations

import logging
import os
import pty
import re
import select
import socket
import threading
import time
import tty
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any

from fluoscan.acquisition.config import FluoscanConfig
from fluoscan.drivers.obis import ObisLaser
from fluoscan.drivers.obis_scpi import ObisErrorCode, ObisStatus, Switch
from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan

log = logging.getLogger(__name__)

PYVISA_SIM_YAML = Path(__file__).with_name("obis-sim.yaml")
# Delay between SOUR:AM:STAT ON and emission while SYST:CDRH is ON, in real time.
CDRH_DELAY_S = 5.0
MAX_QUEUED_ERRORS = 32
GARBLED_REPLY = b"\xfe\x9a#\x00?\xff\r\n"
POLL_S = 0.05


class SimulatorError(Exception):
    """A command the simulated laser rejects. It becomes an ``ERR-<code>`` reply and a queue entry."""

    def __init__(self, code: ObisErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class _Node:
    short: str
    long: str
    optional: bool


def _compile(pattern: str) -> tuple[_Node, ...]:
    """Turn ``"SOURce:POWer:LEVel[:IMMediate]"`` into nodes. The upper-case letters are the short form."""
    nodes = []
    for optional, mnemonic in re.findall(r"(\[?):?([*A-Za-z]+)\]?", pattern):
        short = re.match(r"[*A-Z]+", mnemonic)
        nodes.append(_Node(short.group(0) if short else mnemonic.upper(), mnemonic.upper(), bool(optional)))
    return tuple(nodes)


def _matches(tokens: list[str], nodes: tuple[_Node, ...]) -> bool:
    if not nodes:
        return not tokens
    node, rest = nodes[0], nodes[1:]
    if tokens and tokens[0] in (node.short, node.long) and _matches(tokens[1:], rest):
        return True
    return node.optional and _matches(tokens, rest)


def _header_tokens(header: str) -> list[str]:
    """Split a header into upper-case mnemonics without numeric suffixes (``SOUR1`` is ``SOUR``)."""
    return [re.sub(r"(?<=[A-Z])\d+$", "", token) for token in header.upper().lstrip(":").split(":")]


class ObisSimulator:
    """The state machine of one OBIS laser.

    Thread-safe: servers call :meth:`handle` from their thread while tests set the interlock or key.

    Parameters
    ----------
    wavelength_nm, rated_power_mw, power_limits_mw
        What the laser reports; the limits bound the setpoint.
    time_scale
        Simulated time relative to real time; the CDRH delay is ``5 s * time_scale``.
    clock
        Monotonic clock in seconds, replaceable in tests.
    """

    def __init__(
        self,
        *,
        wavelength_nm: float = 690.0,
        rated_power_mw: float = 100.0,
        power_limits_mw: tuple[float, float] = (1.0, 100.0),
        time_scale: float = 1.0,
        serial_number: str = "SIM690-0001",
        firmware: str = "1.1.0-sim",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wavelength_nm = wavelength_nm
        self.rated_power_mw = rated_power_mw
        self.power_limits_mw = power_limits_mw
        self.cdrh_delay_s = CDRH_DELAY_S * time_scale
        self.serial_number = serial_number
        self.firmware = firmware
        self._clock = clock
        self._lock = threading.RLock()
        self._errors: deque[tuple[int, str]] = deque()
        self._interlock_closed = True
        self._key_on = True
        self.handshake = True
        self._reset()
        self._commands: list[tuple[tuple[_Node, ...], bool, Callable[[str | None], str | None]]] = []
        self._register_commands()

    def _reset(self) -> None:
        self.cdrh = True
        self.power_setpoint_mw = self.power_limits_mw[0]
        self._emission_requested = False
        self._emission_from_s = 0.0

    @property
    def identity(self) -> str:
        return f"Coherent, Inc - OBIS {self.wavelength_nm:g}nm {self.rated_power_mw:g}mW LX - V1.1 (simulated)"

    # State that tests and the scan read or set directly

    @property
    def emission(self) -> bool:
        """True while the laser emits: switched on, past the CDRH delay, interlock closed, key on."""
        with self._lock:
            return self._emission_requested and self._clock() >= self._emission_from_s

    @property
    def emission_pending(self) -> bool:
        with self._lock:
            return self._emission_requested and self._clock() < self._emission_from_s

    @property
    def measured_power_mw(self) -> float:
        return self.power_setpoint_mw if self.emission else 0.0

    @property
    def interlock_closed(self) -> bool:
        return self._interlock_closed

    @interlock_closed.setter
    def interlock_closed(self, closed: bool) -> None:
        with self._lock:
            self._interlock_closed = closed
            if not closed:
                self._stop_emission("interlock opened")

    @property
    def key_on(self) -> bool:
        return self._key_on

    @key_on.setter
    def key_on(self, on: bool) -> None:
        with self._lock:
            self._key_on = on
            if not on:
                self._stop_emission("key switch turned off")

    def _stop_emission(self, reason: str) -> None:
        if self._emission_requested:
            log.info("simulated OBIS laser: emission off, %s", reason)
        self._emission_requested = False

    def status_word(self) -> ObisStatus:
        with self._lock:
            status = ObisStatus.WARMED_UP
            if self.emission:
                status |= ObisStatus.EMISSION
            if self.emission_pending:
                status |= ObisStatus.CDRH_DELAY
            if not self._key_on:
                status |= ObisStatus.STANDBY
            elif self._interlock_closed:
                status |= ObisStatus.READY
            if self._errors:
                status |= ObisStatus.ERROR_QUEUED
            return status

    # Requests

    def handle(self, line: str, *, apply: bool = True) -> list[str]:
        """Execute one request and return its reply lines (none for a set command without handshaking).

        ``apply=False`` replies to a set command as if it were accepted but leaves the state
        unchanged (the STALL fault). Queries get their usual replies.
        """
        line = line.strip()
        header, _, argument_text = line.partition(" ")
        argument = argument_text.strip() or None
        is_query = header.endswith("?")
        with self._lock:
            try:
                handler = self._find(header.rstrip("?"), is_query)
                if is_query or apply:
                    value = handler(argument)
                else:
                    log.info("simulated OBIS laser: stalling %r", line)
                    value = None
            except SimulatorError as exc:
                return [self.reject(exc.code, str(exc))]
            if is_query:
                return [value or "", "OK"] if self.handshake else [value or ""]
            return ["OK"] if self.handshake else []

    def reject(self, code: ObisErrorCode, message: str) -> str:
        """Queue an error and return its ``ERR-<code>`` reply."""
        with self._lock:
            if len(self._errors) >= MAX_QUEUED_ERRORS:
                self._errors[-1] = (ObisErrorCode.QUEUE_FULL.value, "error queue full")
            else:
                self._errors.append((code.value, message))
        log.info("simulated OBIS laser: ERR-%d %s", code.value, message)
        return f"ERR-{code.value}"

    def _find(self, header: str, is_query: bool) -> Callable[[str | None], str | None]:
        tokens = _header_tokens(header)
        for nodes, query, handler in self._commands:
            if query == is_query and _matches(tokens, nodes):
                return handler
        raise SimulatorError(ObisErrorCode.UNRECOGNIZED_COMMAND, "unrecognized command or query")

    def _register_commands(self) -> None:
        def value(text: Callable[[], str]) -> Callable[[str | None], str]:
            return lambda argument: text()

        def add(pattern: str, handler: Callable[[str | None], str | None]) -> None:
            self._commands.append((_compile(pattern.rstrip("?")), pattern.endswith("?"), handler))

        add("*IDN?", value(lambda: self.identity))
        add("*RST", lambda argument: self._reset())
        add("SYSTem:INFormation:MODel?", value(lambda: f"OBIS {self.wavelength_nm:g}nm {self.rated_power_mw:g}mW LX"))
        add("SYSTem:INFormation:WAVelength?", value(lambda: f"{self.wavelength_nm:g}"))
        add("SYSTem:INFormation:POWer?", value(lambda: f"{self.rated_power_mw / 1000:.5f}"))
        add("SYSTem:INFormation:SNUMber?", value(lambda: self.serial_number))
        add("SYSTem:INFormation:FVERsion?", value(lambda: self.firmware))
        add("SYSTem:COMMunicate:HANDshaking", self._set_handshake)
        add("SYSTem:COMMunicate:HANDshaking?", value(lambda: _switch(self.handshake)))
        add("SYSTem:ERRor:COUNt?", value(lambda: str(len(self._errors))))
        add("SYSTem:ERRor:NEXT?", value(self._next_error))
        add("SYSTem:ERRor:CLEar", lambda argument: self._errors.clear())
        add("SYSTem:LOCK?", value(lambda: "OK" if self._interlock_closed else "OFF"))
        add("SYSTem:STATus?", value(lambda: f"{self.status_word().value:08X}"))
        add("SYSTem:FAULt?", value(lambda: "00000000"))
        add("SYSTem:CDRH", self._set_cdrh)
        add("SYSTem:CDRH?", value(lambda: _switch(self.cdrh)))
        add("SOURce:AM[:STATe]", self._set_emission)
        add("SOURce:AM[:STATe]?", value(lambda: _switch(self.emission)))
        add("SOURce:POWer:LEVel[:IMMediate][:AMPLitude]", self._set_power)
        add("SOURce:POWer:LEVel:IMMediate[:AMPLitude]?", value(lambda: f"{self.power_setpoint_mw / 1000:.6f}"))
        add("SOURce:POWer:LEVel:AMPLitude?", value(lambda: f"{self.power_setpoint_mw / 1000:.6f}"))
        add("SOURce:POWer:LEVel?", value(lambda: f"{self.measured_power_mw / 1000:.6f}"))
        add("SOURce:POWer:LIMit:LOW?", value(lambda: f"{self.power_limits_mw[0] / 1000:.6f}"))
        add("SOURce:POWer:LIMit:HIGH?", value(lambda: f"{self.power_limits_mw[1] / 1000:.6f}"))
        add("SOURce:POWer:NOMinal?", value(lambda: f"{self.rated_power_mw / 1000:.5f}"))

    def _next_error(self) -> str:
        if not self._errors:
            return '0,"No error"'
        code, message = self._errors.popleft()
        return f'{code},"{message}"'

    def _set_handshake(self, argument: str | None) -> None:
        self.handshake = _parse_switch(argument)

    def _set_cdrh(self, argument: str | None) -> None:
        self.cdrh = _parse_switch(argument)

    def _set_emission(self, argument: str | None) -> None:
        if not _parse_switch(argument):
            self._stop_emission("switched off")
            return
        if not self._interlock_closed:
            raise SimulatorError(ObisErrorCode.EXECUTION_ERROR, "interlock open")
        if not self._key_on:
            raise SimulatorError(ObisErrorCode.EXECUTION_ERROR, "key switch off")
        if not self._emission_requested:
            delay_s = self.cdrh_delay_s if self.cdrh else 0.0
            self._emission_from_s = self._clock() + delay_s
            self._emission_requested = True
            log.info("simulated OBIS laser: emission on after %g s", delay_s)

    def _set_power(self, argument: str | None) -> None:
        if argument is None:
            raise SimulatorError(ObisErrorCode.MISSING_PARAMETER, "missing power in W")
        try:
            power_mw = float(argument) * 1000.0
        except ValueError:
            raise SimulatorError(ObisErrorCode.SYNTAX_ERROR, f"power {argument!r} is not a number") from None
        low_mw, high_mw = self.power_limits_mw
        if not low_mw <= power_mw <= high_mw:
            raise SimulatorError(
                ObisErrorCode.INVALID_PARAMETER,
                f"power {power_mw / 1000:g} W out of range {low_mw / 1000:g} to {high_mw / 1000:g} W",
            )
        self.power_setpoint_mw = power_mw


def _switch(on: bool) -> str:
    return Switch.ON.value if on else Switch.OFF.value


def _parse_switch(argument: str | None) -> bool:
    if argument is None:
        raise SimulatorError(ObisErrorCode.MISSING_PARAMETER, "missing ON or OFF")
    text = argument.upper()
    if text not in (Switch.ON.value, Switch.OFF.value):
        raise SimulatorError(ObisErrorCode.INVALID_PARAMETER, f"expected ON or OFF, got {argument!r}")
    return text == Switch.ON.value


class LaserTransport(str, Enum):
    TCP = "tcp"
    PTY = "pty"


class _LaserServer:
    """A thread that feeds request lines to an :class:`ObisSimulator` and sends its replies."""

    def __init__(self, device: ObisSimulator | None = None, faults: FaultPlan | Iterable[Fault] | None = None):
        self.device = device if device is not None else ObisSimulator()
        self.faults = faults if isinstance(faults, FaultPlan) else FaultPlan(list(faults or []))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def resource(self) -> str:
        raise NotImplementedError

    def start(self) -> _LaserServer:
        self._thread = threading.Thread(target=self._run, name=f"{type(self).__name__}", daemon=True)
        self._thread.start()
        log.info("simulated OBIS laser serving at %s", self.resource)
        return self

    def stop(self) -> None:
        """Stop the thread and release the socket or pseudo-terminal. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("simulated OBIS laser thread did not stop within 5 s")
            self._thread = None
        self._release()

    def __enter__(self) -> _LaserServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        raise NotImplementedError

    def _requests(self, buffer: bytearray, data: bytes) -> list[str]:
        """Append received bytes and return the complete lines, without empty ones."""
        buffer.extend(data)
        *lines, rest = re.split(rb"\r\n|\r|\n", bytes(buffer))
        buffer[:] = rest
        return [line.decode("ascii", errors="replace") for line in lines if line.strip()]

    def _respond(self, line: str, send: Callable[[bytes], None]) -> bool:
        """Reply to one request, applying a fault if one fires. Return False to drop the connection."""
        fault = self.faults.check(line)
        kind = fault.kind if fault is not None else None
        if kind is FaultKind.TIMEOUT:
            return True
        if kind is FaultKind.DISCONNECT:
            return False
        if kind is FaultKind.REJECT:
            replies = [self.device.reject(ObisErrorCode.EXECUTION_ERROR, "request rejected")]
        else:
            replies = self.device.handle(line, apply=kind is not FaultKind.STALL)

        payload = b"".join(reply.encode("ascii") + b"\r\n" for reply in replies)
        if kind is FaultKind.GARBLE:
            payload = GARBLED_REPLY
        if kind is FaultKind.LATE and fault is not None and self._stop.wait(fault.delay_s):
            return True
        if payload:
            send(payload)
        return True


class LaserTcpServer(_LaserServer):
    """Serves the simulated laser on 127.0.0.1, one client at a time (``port=0``: the OS picks one)."""

    def __init__(
        self,
        device: ObisSimulator | None = None,
        *,
        port: int = 0,
        faults: FaultPlan | Iterable[Fault] | None = None,
    ) -> None:
        super().__init__(device, faults)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(1)
        self.port: int = self._listener.getsockname()[1]
        self.connection_count = 0

    @property
    def resource(self) -> str:
        return f"TCPIP::127.0.0.1::{self.port}::SOCKET"

    def _run(self) -> None:
        while not self._stop.is_set():
            readable, _, _ = select.select([self._listener], [], [], POLL_S)
            if not readable:
                continue
            client, address = self._listener.accept()
            self.connection_count += 1
            log.info("simulated OBIS laser: client %s:%d connected", *address)
            with client:
                self._serve_client(client)
            log.info("simulated OBIS laser: client %s:%d disconnected", *address)

    def _serve_client(self, client: socket.socket) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            readable, _, _ = select.select([client], [], [], POLL_S)
            if not readable:
                continue
            try:
                data = client.recv(4096)
            except OSError as exc:
                log.info("simulated OBIS laser: receive failed: %s", exc)
                return
            if not data:
                return
            for line in self._requests(buffer, data):
                try:
                    if not self._respond(line, client.sendall):
                        log.info("simulated OBIS laser: dropping the connection (injected fault)")
                        return
                except OSError as exc:
                    log.info("simulated OBIS laser: send failed: %s", exc)
                    return

    def _release(self) -> None:
        self._listener.close()


class LaserPtyServer(_LaserServer):
    """Serves the simulated laser on a pseudo-terminal at :attr:`resource` (``ASRL<path>::INSTR``).

    A DISCONNECT fault hangs up: the server moves to a new pseudo-terminal (a new path) and closes
    the old master, so that the client's port vanishes as an unplugged USB adapter's would. The old
    slave stays open until :meth:`stop`, which keeps its number from being reused meanwhile: a client
    reopening the old path then fails instead of reaching another program's pseudo-terminal.
    """

    def __init__(self, device: ObisSimulator | None = None, *, faults: FaultPlan | Iterable[Fault] | None = None):
        super().__init__(device, faults)
        self._master, self._slave, self.path = self._open_pty()
        self._hung_up_slaves: list[int] = []

    @staticmethod
    def _open_pty() -> tuple[int, int, str]:
        master, slave = pty.openpty()
        # A fresh pseudo-terminal echoes and translates line ends until it is raw.
        tty.setraw(slave)
        # The slave stays open here, because without it reading the master fails with EIO once the client closes.
        return master, slave, os.ttyname(slave)

    @property
    def resource(self) -> str:
        return f"ASRL{self.path}::INSTR"

    def _run(self) -> None:
        buffer = bytearray()
        while not self._stop.is_set():
            readable, _, _ = select.select([self._master], [], [], POLL_S)
            if not readable:
                continue
            try:
                data = os.read(self._master, 4096)
            except OSError as exc:
                log.info("simulated OBIS laser: pseudo-terminal read failed: %s", exc)
                continue
            for line in self._requests(buffer, data):
                if not self._respond(line, self._write):
                    self._hang_up()
                    buffer.clear()
                    break

    def _write(self, payload: bytes) -> None:
        os.write(self._master, payload)

    def _hang_up(self) -> None:
        old_master, old_slave, old_path = self._master, self._slave, self.path
        self._master, self._slave, self.path = self._open_pty()
        os.close(old_master)
        self._hung_up_slaves.append(old_slave)
        log.info("simulated OBIS laser: hung up %s, now serving at %s", old_path, self.path)

    def _release(self) -> None:
        # The descriptors are marked closed so that a second stop cannot close a reused number.
        for fd in (self._master, self._slave, *self._hung_up_slaves):
            if fd >= 0:
                os.close(fd)
        self._master = self._slave = -1
        self._hung_up_slaves.clear()


LaserServer = LaserTcpServer | LaserPtyServer


def serve_laser(
    config: FluoscanConfig | None = None,
    *,
    transport: LaserTransport = LaserTransport.TCP,
    port: int = 0,
    faults: FaultPlan | Iterable[Fault] | None = None,
    time_scale: float | None = None,
) -> LaserServer:
    """Start a simulated OBIS laser that reports ``config.laser.wavelength_nm``, and return its server.

    The server runs until :meth:`stop` or the end of a ``with`` block. Other processes connect
    to ``server.resource``. ``time_scale`` defaults to ``config.simulation.time_scale``.
    """
    config = config if config is not None else FluoscanConfig()
    scale = config.simulation.time_scale if time_scale is None else time_scale
    high_mw = max(100.0, config.laser.power_mw)
    device = ObisSimulator(
        wavelength_nm=config.laser.wavelength_nm,
        rated_power_mw=high_mw,
        power_limits_mw=(1.0, high_mw),
        time_scale=scale,
    )
    transport = LaserTransport(transport)
    if transport is LaserTransport.TCP:
        server: LaserServer = LaserTcpServer(device, port=port, faults=faults)
    else:
        server = LaserPtyServer(device, faults=faults)
    server.start()
    return server


def open_simulated_laser(context: Any) -> ObisLaser:
    """Serve a simulated laser for the scan and return an :class:`ObisLaser` connected to it.

    Faults come from ``context.options["laser_faults"]``. The server stops when ``context.stack``
    closes, after the devices. It is also stored in ``context.options["laser_server"]``, so that
    other simulated devices can read the emission state from ``server.device``.
    """
    config = context.config
    server = context.stack.enter_context(serve_laser(config, faults=context.options.get("laser_faults")))
    context.options["laser_server"] = server
    return ObisLaser.from_config(config.laser, resource=server.resource)
