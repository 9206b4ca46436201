"""Fault injection shared by every simulator.

A :class:`Fault` says what goes wrong (:class:`FaultKind`) and when: at the ``occurrence``-th
request that matches ``command`` (a case-insensitive prefix of the request as received, or None for
any request). A simulator calls :meth:`FaultPlan.check` once per request and acts on the fault it
returns. Requests are counted per fault, from 1.

What each kind means on the wire is up to the simulator, along these lines:

- TIMEOUT: read the request and never reply.
- LATE: reply after ``delay_s``.
- GARBLE: reply with corrupted bytes.
- DISCONNECT: drop the connection (close the socket, or hang up the pseudo-terminal).
- REJECT: reply with the device's own error or rejection for the request.
- STALL: accept the request but never finish it (a stage stays BUSY, a camera never delivers the frame).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from enum import Enum

log = logging.getLogger(__name__)


class FaultKind(str, Enum):
    TIMEOUT = "timeout"
    LATE = "late"
    GARBLE = "garble"
    DISCONNECT = "disconnect"
    REJECT = "reject"
    STALL = "stall"


@dataclass(frozen=True)
class Fault:
    """One injected fault: ``kind`` at the ``occurrence``-th request matching ``command``."""

    kind: FaultKind
    command: str | None = None
    occurrence: int = 1
    # Only for LATE: how long the reply is held back, in seconds.
    delay_s: float = 0.5
    # False fires the fault once; True fires it at every matching request from ``occurrence`` on.
    repeat: bool = False

    def __post_init__(self) -> None:
        if self.occurrence < 1:
            raise ValueError(f"fault occurrence counts from 1, got {self.occurrence}")

    def matches(self, request: str) -> bool:
        return self.command is None or request.strip().lower().startswith(self.command.lower())


@dataclass
class FaultPlan:
    """The faults a simulator injects, with per-fault counters. Thread-safe."""

    faults: list[Fault] = field(default_factory=list)
    _counts: dict[int, int] = field(default_factory=dict, init=False, repr=False)
    _fired: set[int] = field(default_factory=set, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def add(self, fault: Fault) -> None:
        with self._lock:
            self.faults.append(fault)

    def check(self, request: str) -> Fault | None:
        """Count ``request`` against every fault and return the first one that fires now, if any."""
        fired: Fault | None = None
        with self._lock:
            for index, fault in enumerate(self.faults):
                if not fault.matches(request):
                    continue
                count = self._counts.get(index, 0) + 1
                self._counts[index] = count
                due = count == fault.occurrence or (fault.repeat and count > fault.occurrence)
                if fired is None and due and (fault.repeat or index not in self._fired):
                    self._fired.add(index)
                    fired = fault
        if fired is not None:
            log.info("injecting %s fault at request %r", fired.kind.value, request.strip())
        return fired
