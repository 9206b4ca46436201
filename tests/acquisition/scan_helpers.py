"""Small simulated scans for the scan tests: a laser served outside the scan, and configurations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

from fluoscan.acquisition.config import FluoscanConfig, parse_config
from fluoscan.simulators.laser import ObisSimulator, serve_laser

# Eight lines across the ICG tube of the phantom, 16 points x 64 wavelengths: a scan takes well
# under a second with instant simulated timing.
SMALL_SCAN: dict[str, Any] = {
    "scan": {"n_lines": 8, "y_start_mm": 30.0, "step_mm": 2.0, "exposure_s": 0.01, "dark_frames": 2},
    "laser": {"timeout_s": 0.3, "emission_timeout_s": 2.0},
    "stage": {"timeout_s": 0.3, "move_timeout_s": 1.0},
    "spectrometer": {"n_points": 16, "horizontal_binning": 16, "frame_timeout_s": 0.5},
    "simulation": {"seed": 3, "time_scale": 0.0},
}


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def small_config(**sections: dict[str, Any]) -> FluoscanConfig:
    """The small scan, with sections overridden key by key."""
    return parse_config(merge(SMALL_SCAN, sections))


class RecordingLaser:
    """A simulated laser served on 127.0.0.1 outside the scan, recording every request it receives."""

    def __init__(self, server: Any) -> None:
        self.server = server
        self.device: ObisSimulator = server.device
        self.requests: list[str] = []
        handle = self.device.handle

        def recording_handle(line: str, **kwargs: Any) -> list[str]:
            self.requests.append(line.strip())
            return handle(line, **kwargs)

        self.device.handle = recording_handle  # type: ignore[method-assign]

    @property
    def resource(self) -> str:
        return self.server.resource

    def emission_requests(self) -> list[str]:
        return [r for r in self.requests if r.upper().replace("SOURCE", "SOUR").startswith("SOUR:AM:STAT ")]

    def config(self, **sections: dict[str, Any]) -> FluoscanConfig:
        """The small scan with the laser driven through this server by the OBIS driver."""
        laser = {"driver": "obis", "resource": self.resource, **sections.pop("laser", {})}
        return small_config(laser=laser, **sections)


@contextlib.contextmanager
def recording_laser(faults: list | None = None) -> Iterator[RecordingLaser]:
    with serve_laser(small_config(), faults=faults) as server:
        yield RecordingLaser(server)


def assert_same_cube(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    np.testing.assert_array_equal(actual, expected)
