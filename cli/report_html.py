"""The report's ``index.html``: the scan's metadata, the devices, the unmixing parameters and the figures."""

from __future__ import annotations

import datetime as dt
import html
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fluoscan.acquisition.store import ScanStore


@dataclass(frozen=True)
class FigureEntry:
    """A figure file of the report folder and its caption in index.html."""

    file: str
    caption: str


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }
table { border-collapse: collapse; margin-bottom: 1.5em; }
th, td { text-align: left; padding: 0.2em 1em 0.2em 0; vertical-align: top; }
th { font-weight: 600; white-space: nowrap; }
figure { margin: 0 0 2.5em 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; margin-top: 0.3em; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; }
"""


def _duration(started: str | None, finished: str | None) -> str | None:
    try:
        seconds = (dt.datetime.fromisoformat(finished) - dt.datetime.fromisoformat(started)).total_seconds()
    except (TypeError, ValueError):
        return None
    return f"{seconds:.1f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def scan_summary(store: ScanStore) -> list[tuple[str, str]]:
    """Return (label, value) rows describing the scan: status, times, raster, devices' settings."""
    attrs = store.attrs
    config = attrs.get("config") or {}
    scan, laser, spectrometer = (config.get(name) or {} for name in ("scan", "laser", "spectrometer"))
    n_lines, n_points, n_wavelengths = store.shape
    wavelengths = store.wavelengths_nm()
    x = store.x()
    x_units = str(store.group["x"].attrs.get("units", ""))
    rows = [
        ("name", scan.get("name")),
        ("status", f"{attrs.get('status')}" + (f" ({attrs['end_reason']})" if attrs.get("end_reason") else "")),
        ("started (UTC)", attrs.get("started")),
        ("finished (UTC)", attrs.get("finished")),
        ("duration", _duration(attrs.get("started"), attrs.get("finished"))),
        ("lines acquired", f"{int(store.line_done().sum())} of {n_lines}"),
        ("cube (y, x, wavelength)", f"{n_lines} × {n_points} × {n_wavelengths}, {store.raw.dtype}"),
        ("y", f"from {scan.get('y_start_mm')} mm in steps of {scan.get('step_mm')} mm" if scan else None),
        ("x", f"{x[0]:g} to {x[-1]:g} {x_units}" if len(x) else None),
        ("wavelength", f"{wavelengths.min():.1f} to {wavelengths.max():.1f} nm" if len(wavelengths) else None),
        ("exposure", f"{scan.get('exposure_s')} s per line" if "exposure_s" in scan else None),
        ("dark frames", scan.get("dark_frames")),
        ("laser", f"{laser.get('power_mw')} mW at {laser.get('wavelength_nm')} nm" if laser else None),
        ("drivers", ", ".join(f"{name} {(config.get(name) or {}).get('driver')}" for name in ("laser", "stage", "spectrometer")) if config else None),
        ("sensor temperature setpoint", f"{spectrometer.get('temperature_c')} °C" if "temperature_c" in spectrometer else None),
        ("imported from", attrs.get("imported_from")),
        ("fluoscan version", attrs.get("fluoscan_version")),
    ]
    return [(label, str(value)) for label, value in rows if value is not None]


def _table(rows: list[tuple[str, str]]) -> str:
    cells = "".join(f"<tr><th>{html.escape(label)}</th><td>{html.escape(value)}</td></tr>" for label, value in rows)
    return f"<table>{cells}</table>"


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, (list, tuple)):
        return [_rounded(item) for item in value]
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    return value


def _json_value(value: Any) -> str:
    """Write an attribute for the page: strings as they are, anything else as JSON with 4 significant digits."""
    return value if isinstance(value, str) else json.dumps(_rounded(value))


def write_index(path: Path, store: ScanStore, entries: list[FigureEntry], unmixing_attrs: dict[str, Any] | None) -> Path:
    """Write index.html: the scan's metadata, the devices, the unmixing parameters and the figures."""
    attrs = store.attrs
    title = html.escape(f"fluoscan report: {store.path.name}")
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>"]
    parts.append(f"<style>{_STYLE}</style></head><body><h1>{title}</h1>")
    parts.append(f"<p>Store: <code>{html.escape(str(store.path.resolve()))}</code></p>")
    parts.append("<h2>Scan</h2>" + _table(scan_summary(store)))

    devices = attrs.get("devices")
    if isinstance(devices, dict) and devices:
        parts.append("<h2>Devices</h2>" + _table([(str(kind), _json_value(identity)) for kind, identity in devices.items()]))
    if unmixing_attrs is not None:
        rows = [(str(key), _json_value(value)) for key, value in sorted(unmixing_attrs.items())]
        parts.append("<h2>Unmixing</h2>" + _table(rows))
    else:
        parts.append("<h2>Unmixing</h2><p>This store has no <code>unmixing/</code> group: run <code>fluoscan unmix</code>.</p>")

    parts.append("<h2>Figures</h2>")
    if not entries:
        parts.append("<p>No figure: the store has no acquired line.</p>")
    for entry in entries:
        source, caption = html.escape(entry.file), html.escape(entry.caption)
        parts.append(f'<figure><img src="{source}" alt="{caption}"><figcaption>{caption}</figcaption></figure>')
    if attrs.get("config"):
        configuration = html.escape(json.dumps(attrs["config"], indent=2))
        parts.append(f"<details><summary>Full configuration</summary><pre>{configuration}</pre></details>")
    parts.append("</body></html>\n")
    path.write_text("\n".join(parts), encoding="utf-8")
    return path
