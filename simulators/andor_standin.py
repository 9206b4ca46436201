"""Behaviour shared by the stand-in Andor libraries: the call wrapper, fault injection, disconnection.

:mod:`fluoscan.simulators.andor_sdk` describes what each fault kind does.
"""

from __future__ import annotations

import functools
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from pylablib.devices.Andor.atmcd32d_lib import DRV_STATUS, AndorSDK2LibError

from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan


def _library_call(needs_init: bool = True, locked: bool = True):
    """Wrap a stand-in function: disconnection, fault injection, initialisation check, locking."""

    def decorate(method: Callable[..., Any]) -> Callable[..., Any]:
        name = method.__name__

        @functools.wraps(method)
        def wrapper(self: _StandIn, *args: Any) -> Any:
            if not locked:
                self._before_call(name, needs_init)
                return method(self, *args)
            with self._lock:
                self._before_call(name, needs_init)
                return method(self, *args)

        return wrapper

    return decorate


class _StandIn:
    """Shared fault handling of the two stand-in libraries."""

    _error_class: type[Exception] = AndorSDK2LibError
    _disconnect_code: int = DRV_STATUS.DRV_USBERROR

    def __init__(self, faults: FaultPlan | None, sleep: Callable[[float], None]) -> None:
        self._faults = faults
        self._sleep = sleep
        self._lock = threading.RLock()
        self._initialized = False
        self._disconnected = False
        # The latest calls by function name, for tests and debugging.
        self.calls: deque[str] = deque(maxlen=2000)

    def _reject_code(self, name: str) -> int:
        raise NotImplementedError

    def _not_initialized_code(self) -> int:
        raise NotImplementedError

    def _on_frame_fault(self, name: str, fault: Fault) -> None:
        """Apply a TIMEOUT, STALL or GARBLE that was injected at a named call."""

    def _before_call(self, name: str, needs_init: bool) -> None:
        self.calls.append(name)
        if self._disconnected:
            raise self._error_class(name, self._disconnect_code)
        fault = self._faults.check(name) if self._faults is not None else None
        if fault is not None:
            if fault.kind is FaultKind.LATE:
                self._sleep(fault.delay_s)
            elif fault.kind is FaultKind.REJECT:
                raise self._error_class(name, self._reject_code(name))
            elif fault.kind is FaultKind.DISCONNECT:
                self._disconnected = True
                raise self._error_class(name, self._disconnect_code)
            else:
                self._on_frame_fault(name, fault)
        if needs_init and not self._initialized:
            raise self._error_class(name, self._not_initialized_code())

    @property
    def disconnected(self) -> bool:
        return self._disconnected

    def reconnect(self) -> None:
        """Plug the device back in after a DISCONNECT fault (it needs a new Initialize)."""
        with self._lock:
            self._disconnected = False
            self._initialized = False

