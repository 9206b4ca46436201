"""Simulated mouse scans for the unmixing acceptance tests and bench/bench_quality.py.

Each scan runs the real scan procedure (:func:`fluoscan.acquisition.run_scan`) on the demo
configuration, config/simulated-mouse.toml, with instant simulated timing. It keeps the demo's field
(89 mm along the body, 32 mm across) because a Hoyer sparsity target depends on the fraction of the
field that a marker fills: the shipped target 0.9 is only meaningful on that field. To stay fast it
takes 60 lines 1.5 mm apart instead of 120 lines 0.75 mm apart (the 6 mm tubes still span 4 lines)
and sums 8 detector columns per wavelength instead of 4 (128 wavelengths).

The phantom does not give the unmixing its truth to start from. The markers reach the camera
through 1 mm of tissue (5 mm in "deeper"), which reshapes their spectra away from the library
spectra the unmixing starts from. The autofluorescence mixes skin with the chlorophyll of the gut
contents, whose spectrum differs from both. The truth's "autofluorescence" is the one spectrum that best explains
that mixture over the field, with each pixel's least-squares weight
(:func:`fluoscan.simulators.phantom.merge_autofluorescence`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import zarr

from fluoscan.acquisition import run_scan
from fluoscan.acquisition.config import FluoscanConfig, load_config, parse_config
from fluoscan.config import shipped_config
from fluoscan.unmixing.metrics import TruthScores, compare_to_truth

# Acceptance limits on the phantom.
MIN_CORRELATION = 0.98
MAX_SPECTRAL_ANGLE_RAD = 0.05
MAX_BACKGROUND_ERROR = 0.05

# Phantom settings that differ from the default animal (PhantomConfig).
PHANTOM_SETTINGS: dict[str, dict[str, Any]] = {
    "default": {},
    # Blur sigma 2.65 mm instead of 0.65 mm: each tube spreads over about 5 times more pixels.
    "deeper": {"tube_depth_mm": 5.0},
    # Marker peaks 3 % of the default: about as bright as the autofluorescence under the tubes.
    "dimmer": {"marker_brightness": 0.03},
    # 10 times fewer photons and 20 e read noise.
    "noisier": {"photons_per_mw_s": 2.0e3, "read_noise_e": 20.0},
    # 40 times fewer photons and 30 e read noise.
    "noisiest": {"photons_per_mw_s": 5.0e2, "read_noise_e": 30.0},
    # No chlorophyll in the gut, as after a week on a purified diet: the skin is the only autofluorescence.
    "purified": {"chlorophyll_brightness": 0.0},
}

# Settings that only bench/bench_quality.py scans: "deeper" and "dimmer" without the gut's chlorophyll,
# which tell the failures that the chlorophyll causes from those of depth and brightness.
DIAGNOSTIC_SETTINGS: dict[str, dict[str, Any]] = {
    "deeper-purified": {"tube_depth_mm": 5.0, "chlorophyll_brightness": 0.0},
    "dimmer-purified": {"marker_brightness": 0.03, "chlorophyll_brightness": 0.0},
}

# Unmixing methods, as arguments of unmix_store on top of the demo configuration.
METHODS: dict[str, dict[str, Any]] = {
    # The published method: sparsity target 0.9 for both markers, constant starting weights.
    "published": {"sparsity": [None, 0.9, 0.9], "abundance_start": "constant", "site_background": "fit"},
    "auto": {"sparsity": [None, "auto", "auto"], "abundance_start": "lstsq", "site_background": "fit"},
    # "auto", then the autofluorescence at the marker sites interpolated from the tissue around them.
    "auto+sites": {"sparsity": [None, "auto", "auto"], "abundance_start": "lstsq", "site_background": "interpolate"},
}

_FAST_RASTER = {
    "scan": {"n_lines": 60, "step_mm": 1.5, "dark_frames": 4},
    "spectrometer": {"horizontal_binning": 8},
    "simulation": {"time_scale": 0.0},
}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def phantom_config(setting: str, **sections: dict[str, Any]) -> FluoscanConfig:
    """Return the demo configuration on the fast raster with one of :data:`PHANTOM_SETTINGS` or :data:`DIAGNOSTIC_SETTINGS`."""
    base = load_config(shipped_config("simulated-mouse")).to_dict()
    phantom = {**PHANTOM_SETTINGS, **DIAGNOSTIC_SETTINGS}[setting]
    data = _merge(_merge(base, _FAST_RASTER), {"simulation": {"phantom": phantom}})
    return parse_config(_merge(data, sections), f"phantom setting {setting!r}")


def scan_phantom(path: str | Path, setting: str) -> Path:
    """Simulate a scan of the phantom with one of :data:`PHANTOM_SETTINGS` or :data:`DIAGNOSTIC_SETTINGS` into a new store."""
    return run_scan(phantom_config(setting), path, overwrite=True)


def store_scores(path: str | Path) -> TruthScores:
    """Score the ``unmixing/`` group of a simulated store against its ``truth/`` group."""
    group = zarr.open_group(str(path), mode="r")
    truth, unmixing = group["truth"], group["unmixing"]
    names = list(truth.attrs["components"])
    return compare_to_truth(
        truth["abundance"][:],
        truth["spectra"][:],
        unmixing["abundance"][:],
        unmixing["spectra"][:],
        names=names,
        background=names.index("autofluorescence"),
    )


def failed_criteria(scores: TruthScores) -> set[str]:
    """Return the acceptance criteria that ``scores`` miss: "correlation", "spectra" and "background"."""
    failed = set()
    if not np.all(scores.correlation >= MIN_CORRELATION):
        failed.add("correlation")
    if not np.all(scores.spectral_angle <= MAX_SPECTRAL_ANGLE_RAD):
        failed.add("spectra")
    if not abs(scores.background_error) <= MAX_BACKGROUND_ERROR:
        failed.add("background")
    return failed
