"""Open the devices a configuration names, through factories registered as package entry points.

Each device kind has an entry-point group (``fluoscan.lasers``, ``fluoscan.stages``,
``fluoscan.spectrometers``); an entry's name is the ``driver`` value of the configuration and its
object is a factory ``factory(context: DeviceContext) -> device``. The shipped drivers and the
simulators register themselves in pyproject.toml, so this module never imports a simulator and a
third-party package can add a driver without changing fluoscan.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fluoscan.acquisition.config import FluoscanConfig
from fluoscan.drivers import DeviceUnavailable, Laser, Spectrometer, Stage

log = logging.getLogger(__name__)

GROUPS = {"laser": "fluoscan.lasers", "stage": "fluoscan.stages", "spectrometer": "fluoscan.spectrometers"}


@dataclass
class DeviceContext:
    """What a device factory may use: the whole configuration, the devices opened before it, and a cleanup stack.

    Factories that start helpers (a simulator's server thread, say) register their cleanup on
    ``stack``; it is closed after every device is closed.
    """

    config: FluoscanConfig
    stack: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)
    laser: Laser | None = None
    stage: Stage | None = None
    # Free-form settings for factories, e.g. fault injection in tests; never read from a config file.
    options: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class GroundTruthSource(Protocol):
    """A simulated spectrometer that knows the phantom behind its frames."""

    def ground_truth(self, positions_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Return abundance (y, x, component), spectra (component, wavelength) and component names."""
        ...


@dataclass
class Devices:
    laser: Laser
    stage: Stage
    spectrometer: Spectrometer

    def identities(self) -> dict[str, str]:
        return {
            "laser": self.laser.identity(),
            "stage": self.stage.identity(),
            "spectrometer": self.spectrometer.identity(),
        }


def available_drivers(kind: str) -> list[str]:
    """Return the driver names registered for a device kind ("laser", "stage" or "spectrometer")."""
    return sorted(entry.name for entry in entry_points(group=GROUPS[kind]))


def find_factory(kind: str, driver: str) -> Callable[[DeviceContext], Any]:
    """Return the factory registered for ``driver``, or raise DeviceUnavailable naming the choices."""
    matches = [entry for entry in entry_points(group=GROUPS[kind]) if entry.name == driver]
    if not matches:
        choices = ", ".join(available_drivers(kind)) or "none (is fluoscan installed with pip install -e .?)"
        raise DeviceUnavailable(f"unknown {kind} driver {driver!r}; available drivers: {choices}")
    return matches[0].load()


def open_device(kind: str, context: DeviceContext) -> Any:
    """Open one device of ``kind`` with the driver its configuration section names."""
    driver = getattr(context.config, kind).driver
    factory = find_factory(kind, driver)
    log.info("opening %s with driver %r", kind, driver)
    device = factory(context)
    return device


@contextlib.contextmanager
def open_devices(config: FluoscanConfig, options: dict[str, Any] | None = None):
    """Open laser, stage and spectrometer, in that order, and close them in reverse order on exit.

    The spectrometer opens last because a simulated one reads the laser and stage through the
    context. Yields a :class:`Devices`.
    """
    with contextlib.ExitStack() as helpers, contextlib.ExitStack() as stack:
        # ``helpers`` (servers) is entered first, so it closes after the devices in ``stack``.
        context = DeviceContext(config=config, stack=helpers, options=dict(options or {}))
        context.laser = stack.enter_context(open_device("laser", context))
        context.stage = stack.enter_context(open_device("stage", context))
        spectrometer = stack.enter_context(open_device("spectrometer", context))
        yield Devices(laser=context.laser, stage=context.stage, spectrometer=spectrometer)
