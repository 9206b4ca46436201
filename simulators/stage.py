"""A simulated Zaber stage served on a pseudo-terminal, so that any serial client can drive it.

:class:`StageSimulator` owns a pty pair and a thread that reads command lines from the master side
and writes the replies of a :class:`~fluoscan.simulators.stage_device.SimulatedZaberDevice`. Clients
open :attr:`StageSimulator.port` as they would ``/dev/ttyUSB0``. The simulator keeps its own slave
descriptor open, so that a client closing the port does not make the master report EIO.

Line input follows the Zaber ASCII protocol: ``\\r``, ``\\n`` or both end a command, backspace deletes
the last byte, DEL (127) drops the partial command, and any other control or non-ASCII byte also drops
it. Replies end with ``\\r\\n``.

Faults (:class:`~fluoscan.simulators.faults.FaultPlan`) are matched against the command text after
address, axis and message id: ``"move abs"`` matches the n-th absolute move, ``"get pos"`` a position
query, and ``""`` every request including status polls. What each kind does here:

- TIMEOUT: the command is dropped, with no reply;
- LATE: the reply comes ``delay_s`` later;
- GARBLE: the reply comes with every third byte replaced by 0xFF;
- DISCONNECT: the simulator hangs up (closes the pty). With ``link_path`` it then opens a new pty and
  points the link at it, as a USB adapter that re-enumerates keeps its ``/dev/serial/by-id`` link,
  unless ``reopen_after_hang_up`` is False: then it removes the link and stops serving;
- REJECT: the command gets ``RJ`` with BADDATA when it carries a value, else BADCOMMAND;
- STALL: the command is carried out, then the axis stays BUSY until ``stop`` or ``estop``.
"""

from __future__ import annotations

import errno
import logging
import os
import pty
import select
import threading
import tty
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from fluoscan.drivers.zaber import ZaberStage, stage_from_config
from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan
from fluoscan.simulators.stage_device import Request, SimulatedZaberDevice

if TYPE_CHECKING:
    from fluoscan.acquisition.config import FluoscanConfig
    from fluoscan.acquisition.devices import DeviceContext

log = logging.getLogger(__name__)

_BACKSPACE, _DELETE = 8, 127
_MAX_COMMAND_BYTES = 512


class StageSimulator:
    """Serve a simulated Zaber device on a pseudo-terminal. A context manager; :meth:`close` is idempotent.

    Parameters
    ----------
    device
        The simulated device; a default :class:`SimulatedZaberDevice` when None.
    faults
        Faults to inject, as a plan or a list of :class:`Fault`.
    link_path
        A symbolic link kept pointing at the current pty; :attr:`port` is then this path. Tests that
        hang up should use one: the kernel may give a closed pty's number to the next pty that any
        process opens, so a client reopening the bare path could reach another program's pty.
    reopen_after_hang_up
        After a DISCONNECT fault, serve again on a new pty behind ``link_path``. Without
        ``link_path`` the simulator never serves again.
    """

    def __init__(
        self,
        device: SimulatedZaberDevice | None = None,
        *,
        faults: FaultPlan | Iterable[Fault] | None = None,
        link_path: str | Path | None = None,
        reopen_after_hang_up: bool = True,
    ) -> None:
        self.device = device if device is not None else SimulatedZaberDevice()
        self.faults = faults if isinstance(faults, FaultPlan) else FaultPlan(list(faults or []))
        self.link_path = Path(link_path) if link_path is not None else None
        self.reopen_after_hang_up = reopen_after_hang_up
        self.disconnects = 0
        self._hang_up_done = threading.Condition()
        self._requests: list[str] = []
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path = ""
        self._partial = bytearray()
        self._stop = threading.Event()
        self._wake_read, self._wake_write = os.pipe()
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def port(self) -> str:
        """The path a client opens: the link when ``link_path`` is set, else the pty's slave path."""
        return str(self.link_path) if self.link_path is not None else self._pty_path

    @property
    def pty_path(self) -> str:
        """The slave path of the current pty, e.g. ``/dev/pts/3``; empty after a hang-up without ``link_path``."""
        return self._pty_path

    @property
    def requests(self) -> list[str]:
        """Command text of every request addressed to this device so far (``""`` for a status poll)."""
        return list(self._requests)

    @property
    def is_serving(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> StageSimulator:
        """Open the pty and start serving; return self."""
        if self._thread is not None:
            raise RuntimeError("the stage simulator is already started; create a new one to serve again")
        self._open_pty()
        self._thread = threading.Thread(target=self._serve, name=f"stage simulator {self.port}", daemon=True)
        self._thread.start()
        log.info("stage simulator serving device %d on %s", self.device.address, self.port)
        return self

    def wait_for_hang_ups(self, count: int, timeout_s: float) -> bool:
        """Wait until ``count`` hang-ups are complete, including any reopening; return False on timeout."""
        with self._hang_up_done:
            return self._hang_up_done.wait_for(lambda: self.disconnects >= count, timeout_s)

    def join(self, timeout_s: float | None = None) -> bool:
        """Wait until the serving thread ends (after :meth:`close`, or a hang-up it does not come back from).

        Returns True if the thread has ended, False if ``timeout_s`` passed first.
        """
        if self._thread is not None:
            self._thread.join(timeout_s)
        return not self.is_serving

    def close(self) -> None:
        """Stop the thread, close the pty and remove the link."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        os.write(self._wake_write, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5.0)
            if self._thread.is_alive():
                log.error("stage simulator thread on %s did not stop within 5 s", self.port)
        self._close_pty()
        for fd in (self._wake_read, self._wake_write):
            os.close(fd)
        if self.link_path is not None and self.link_path.is_symlink():
            self.link_path.unlink()
        log.info("stage simulator stopped")

    def __enter__(self) -> StageSimulator:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- pty ---------------------------------------------------------------------------------------

    def _open_pty(self) -> None:
        master, slave = pty.openpty()
        # A fresh pty echoes and translates line ends until set raw.
        tty.setraw(slave)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._pty_path = os.ttyname(slave)
        self._partial.clear()
        if self.link_path is not None:
            # Replace the link atomically, so that a client never sees it missing.
            staging = self.link_path.with_name(self.link_path.name + ".new")
            staging.unlink(missing_ok=True)
            staging.symlink_to(self._pty_path)
            os.replace(staging, self.link_path)

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None
        self._pty_path = ""

    def _hang_up(self) -> None:
        """Close the pty as a pulled cable would; reopen a new one behind ``link_path`` if configured to."""
        old_path = self._pty_path
        self._close_pty()
        if self.link_path is not None and self.reopen_after_hang_up:
            self._open_pty()
            log.info("stage simulator hung up %s and serves again on %s (link %s)", old_path, self._pty_path, self.link_path)
        else:
            if self.link_path is not None:
                self.link_path.unlink(missing_ok=True)
            log.info("stage simulator hung up %s and stops serving", old_path)
        with self._hang_up_done:
            self.disconnects += 1
            self._hang_up_done.notify_all()

    # -- serving -------------------------------------------------------------------------------------

    def _serve(self) -> None:
        while not self._stop.is_set() and self._master is not None:
            readable, _, _ = select.select([self._master, self._wake_read], [], [])
            if self._wake_read in readable:
                return
            try:
                data = os.read(self._master, 4096)
            except BlockingIOError:
                continue
            except OSError as exc:
                log.error("stage simulator: reading the pty failed: %s", exc)
                return
            for line in self._split_lines(data):
                self._handle(line)

    def _split_lines(self, data: bytes) -> list[str]:
        lines = []
        for byte in data:
            if byte in (0x0D, 0x0A):
                if self._partial:
                    lines.append(self._partial.decode("ascii"))
                self._partial.clear()
            elif byte == _BACKSPACE:
                del self._partial[-1:]
            elif 32 <= byte <= 126 and len(self._partial) < _MAX_COMMAND_BYTES:
                self._partial.append(byte)
            else:
                # DEL, another control byte, a non-ASCII byte or an overlong line drops the partial command.
                self._partial.clear()
        return lines

    def _handle(self, line: str) -> None:
        request = self.device.parse(line)
        if request is None:
            log.debug("stage simulator ignored %r", line)
            return
        self._requests.append(request.text)
        fault = self.faults.check(request.text)
        kind = fault.kind if fault is not None else None

        if kind is FaultKind.TIMEOUT:
            return
        if kind is FaultKind.DISCONNECT:
            self._hang_up()
            return
        if kind is FaultKind.REJECT:
            reason = "BADDATA" if any(word.lstrip("+-").isdigit() for word in request.text.split()) else "BADCOMMAND"
            reply = self.device.reply(request, reason, accepted=False)
        else:
            reply = self.device.execute(request)
        if kind is FaultKind.STALL:
            self.device.stall()
        if kind is FaultKind.LATE and fault is not None and self._stop.wait(fault.delay_s):
            return

        data = f"{reply}\r\n".encode("ascii")
        if kind is FaultKind.GARBLE:
            body = bytearray(data[:-2])
            body[2::3] = b"\xff" * len(body[2::3])
            data = bytes(body) + b"\r\n"
        self._write(data, request)

    def _write(self, data: bytes, request: Request) -> None:
        view = memoryview(data)
        while view and self._master is not None:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                log.warning("stage simulator: the pty buffer of %s is full (no client reads it); dropped the reply to %r", self.port, request.text)
                return
            except OSError as exc:
                if exc.errno != errno.EIO:
                    raise
                log.warning("stage simulator: writing to %s failed: %s", self.port, exc)
                return
            view = view[written:]


def _device_from_config(config: FluoscanConfig | None, **settings: Any) -> SimulatedZaberDevice:
    if config is not None:
        settings.setdefault("address", config.stage.device_address)
        settings.setdefault("microstep_mm", config.stage.microstep_mm)
        settings.setdefault("velocity_mm_s", config.simulation.stage_velocity_mm_s)
        settings.setdefault("acceleration_mm_s2", config.simulation.stage_acceleration_mm_s2)
        settings.setdefault("time_scale", config.simulation.time_scale)
    return SimulatedZaberDevice(**settings)


def serve_stage(
    config: FluoscanConfig | None = None,
    *,
    faults: FaultPlan | Iterable[Fault] | None = None,
    link_path: str | Path | None = None,
    **device_settings: Any,
) -> StageSimulator:
    """Start serving a simulated stage and return the running :class:`StageSimulator`.

    The device takes its address and microstep from ``config.stage`` and its speed, acceleration and
    time scale from ``config.simulation``; ``device_settings`` (any :class:`SimulatedZaberDevice`
    parameter) override them. The caller closes the simulator, e.g. with a ``with`` block.
    """
    device = _device_from_config(config, **device_settings)
    return StageSimulator(device, faults=faults, link_path=link_path).start()


def open_simulated_stage(context: DeviceContext) -> ZaberStage:
    """Serve a simulated stage and open the Zaber driver on it (entry point ``simulated`` of ``fluoscan.stages``).

    ``context.options`` may contain ``"stage_faults"`` (a FaultPlan or a list of Faults) and
    ``"stage_simulator"`` (a dict of :class:`SimulatedZaberDevice` settings, e.g. ``{"homed": True}``).
    The simulator closes with ``context.stack``.
    """
    simulator = serve_stage(
        context.config,
        faults=context.options.get("stage_faults"),
        **context.options.get("stage_simulator", {}),
    )
    context.stack.callback(simulator.close)
    return stage_from_config(context.config.stage, port=simulator.port)
