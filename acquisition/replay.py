"""Configurations for replaying a store: its raster, with simulated laser and stage and the replay spectrometer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fluoscan.acquisition.config import ConfigError, FluoscanConfig, parse_config
from fluoscan.acquisition.store import ScanStore


def raster_config(
    *,
    n_lines: int,
    y_mm: np.ndarray,
    n_points: int,
    point_pitch_mm: float | None,
    dark_frames: int,
    component_names: list[str] | None = None,
) -> dict[str, Any]:
    """Return a configuration dictionary for a recorded cube whose devices are unknown."""
    step_mm = float(y_mm[1] - y_mm[0]) if n_lines > 1 else 1.0
    config: dict[str, Any] = {
        "scan": {
            "name": "imported cube",
            "y_start_mm": float(y_mm[0]),
            "step_mm": step_mm,
            "n_lines": n_lines,
            "dark_frames": dark_frames,
        },
        "spectrometer": {"n_points": n_points, "point_pitch_mm": point_pitch_mm},
        # Constant starting weights pull data-picked ("auto") spectra to the mean shape; least squares keeps them.
        "unmixing": {"abundance_start": "lstsq"},
    }
    if component_names:
        config["unmixing"]["components"] = [{"name": name, "spectrum": "auto"} for name in component_names]
    return config


def replay_config(store_path: str | Path) -> FluoscanConfig:
    """Build the configuration that replays ``store_path`` through the simulated devices.

    The store's own configuration is kept (raster, exposure, unmixing); the laser and stage become
    simulated devices, the spectrometer plays back the store's frames, and simulated timing is instant.
    """
    store = ScanStore.open(store_path)
    stored = store.attrs.get("config")
    if not stored:  # a store written by another tool
        n_lines, n_points, _ = store.shape
        x = store.x()
        pitch = float(x[1] - x[0]) if n_points > 1 and store.group["x"].attrs.get("units") == "mm" else None
        frames = store.dark_frames()
        stored = raster_config(
            n_lines=n_lines,
            y_mm=store.y_mm(),
            n_points=n_points,
            point_pitch_mm=pitch,
            dark_frames=0 if frames is None else len(frames),
        )
    data = {section: dict(values) for section, values in stored.items()}
    data["laser"] = {**data.get("laser", {}), "driver": "simulated", "resource": None}
    data["stage"] = {**data.get("stage", {}), "driver": "simulated", "port": None}
    data["spectrometer"] = {**data.get("spectrometer", {}), "driver": "replay", "replay_store": str(Path(store_path).absolute())}
    data["simulation"] = {**data.get("simulation", {}), "time_scale": 0.0}
    try:
        return parse_config(data, f"the configuration stored in {store_path}")
    except ConfigError as exc:
        raise ConfigError(f"cannot replay {store_path}: {exc}") from None
