"""``fluoscan report``: figures of a scan store and an index.html, and the live scan preview.

:func:`write_report` reads a store (raw data, and ``unmixing/``, ``unmixing/sweep/`` and ``truth/``
when present) and writes PNG figures with an ``index.html`` that shows them next to the scan's
metadata. :class:`PreviewWriter` redraws ``<store>-preview.png`` during a scan.

The sparsity sweep is read from ``unmixing/sweep/``: ``targets`` (target,), ``n_zeroed`` (target,
component), ``spectra_distance`` (target, component) and, optionally, ``abundance`` (target, y, x,
component).
"""

from __future__ import annotations

import datetime as dt
import html
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from matplotlib.figure import Figure

from fluoscan.acquisition.store import ScanStore
from fluoscan.cli import figures
from fluoscan.cli.figures import MapAxes

log = logging.getLogger(__name__)

# Lines read from the raw cube at once while averaging it: bounds memory for large scans.
_BLOCK_LINES = 32
# Most sparsity targets drawn as map columns; more would shrink each map below readability.
_MAX_SWEEP_COLUMNS = 6
# After the last line is queued, the preview waits this long for the writer to store it.
FINAL_WAIT_S = 10.0
_FINAL_POLL_S = 0.1


def default_report_dir(store_path: str | Path) -> Path:
    """Return the default report folder, ``<store>-report`` next to the store."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}-report")


def preview_path(store_path: str | Path) -> Path:
    """Return the scan preview's path, ``<store>-preview.png`` next to the store."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}-preview.png")


# ---------------------------------------------------------------------------------- reading


def map_axes_of(store: ScanStore) -> MapAxes:
    """Return the map coordinates: x as stored, y read back, or planned where lines are missing.

    y falls back to the planned positions (``scan.y_start_mm`` + i ``scan.step_mm``) when some
    lines were not acquired or the readback is not monotonic, and to the line index without them.
    """
    x = store.x()
    x_units = str(store.group["x"].attrs.get("units", "point index"))
    y = store.y_mm()
    steps = np.diff(y)
    if np.all(np.isfinite(y)) and (len(y) < 2 or np.all(steps > 0) or np.all(steps < 0)):
        return MapAxes(x=x, y=y, x_units=x_units, y_units="mm")
    scan_config = (store.attrs.get("config") or {}).get("scan") or {}
    if "y_start_mm" in scan_config and "step_mm" in scan_config:
        planned = scan_config["y_start_mm"] + np.arange(len(y)) * scan_config["step_mm"]
        return MapAxes(x=x, y=planned, x_units=x_units, y_units="mm")
    return MapAxes(x=x, y=np.arange(len(y), dtype=float), x_units=x_units, y_units="line index")


@dataclass
class RawSummary:
    """Averages of the dark-subtracted raw cube over the lines acquired."""

    mean_image: np.ndarray  # (y, x) counts, NaN on lines not acquired
    mean_spectrum: np.ndarray  # (wavelength,) counts
    bright_spectrum: np.ndarray | None  # (wavelength,) counts, brightest 1 % of pixels
    n_lines_done: int


def _done_blocks(done: np.ndarray) -> list[slice]:
    return [
        slice(start, min(start + _BLOCK_LINES, len(done)))
        for start in range(0, len(done), _BLOCK_LINES)
        if done[start : start + _BLOCK_LINES].any()
    ]


def summarise_raw(store: ScanStore) -> RawSummary | None:
    """Average the raw cube block by block; return None when no line is acquired."""
    done = store.line_done()
    if not done.any():
        return None
    n_lines, n_points, n_wavelengths = store.shape
    dark = store.dark()
    mean_image = np.full((n_lines, n_points), np.nan)
    spectrum_sum = np.zeros(n_wavelengths)
    blocks = _done_blocks(done)

    def read_block(block: slice) -> np.ndarray:
        cube = np.asarray(store.raw[block], dtype=np.float64)
        if dark is not None:
            cube -= dark[None, :, :]
        cube[~done[block]] = np.nan
        return cube

    for block in blocks:
        cube = read_block(block)
        mean_image[block] = cube.mean(axis=2)
        spectrum_sum += np.nansum(cube, axis=(0, 1))
    n_pixels = int(done.sum()) * n_points

    # A second pass collects the spectra of the brightest pixels, once their threshold is known.
    threshold = np.nanpercentile(mean_image, 99)
    bright_sum, n_bright = np.zeros(n_wavelengths), 0
    for block in blocks:
        bright = mean_image[block] >= threshold
        if bright.any():
            bright_sum += read_block(block)[bright].sum(axis=0)
            n_bright += int(bright.sum())
    bright_spectrum = bright_sum / n_bright if n_bright else None
    return RawSummary(mean_image, spectrum_sum / n_pixels, bright_spectrum, int(done.sum()))


@dataclass
class Sweep:
    """A sparsity sweep: one unmixing per sparsity target."""

    targets: np.ndarray  # (target,)
    n_zeroed: np.ndarray  # (target, component)
    spectra_distance: np.ndarray  # (target, component)
    abundance: np.ndarray | None  # (target, y, x, component)


@dataclass
class Unmixing:
    """The arrays and attributes of a store's ``unmixing/`` group; each array may be absent."""

    names: list[str]
    attrs: dict[str, Any]
    abundance: np.ndarray | None = None
    abundance_units: str = "a.u."
    spectra: np.ndarray | None = None
    spectra_init: np.ndarray | None = None
    residual: np.ndarray | None = None
    residual_attrs: dict[str, Any] = field(default_factory=dict)
    loss: np.ndarray | None = None
    loss_attrs: dict[str, Any] = field(default_factory=dict)
    sweep: Sweep | None = None


def _array(group: zarr.Group, name: str) -> np.ndarray | None:
    return np.asarray(group[name][:]) if name in group else None


def component_names(group: zarr.Group, n_components: int) -> list[str]:
    """Return the component names: the ``components`` attribute, the ``component`` array, or numbers."""
    names = group.attrs.get("components")
    if names is None and "component" in group:
        names = [str(name) for name in np.asarray(group["component"][:])]
    if names is None or len(names) != n_components:
        if names is not None:
            log.warning("%s names %d components, its arrays have %d; numbering them", group.path, len(names), n_components)
        names = [f"component {index}" for index in range(n_components)]
    return [str(name) for name in names]


def read_unmixing(store: ScanStore) -> Unmixing | None:
    """Read ``unmixing/`` (and ``unmixing/sweep/``) into memory; None when the store has none."""
    if "unmixing" not in store.group:
        return None
    group = store.group["unmixing"]
    abundance = _array(group, "abundance")
    spectra = _array(group, "spectra")
    n_components = 0
    if abundance is not None:
        n_components = abundance.shape[-1]
    elif spectra is not None:
        n_components = spectra.shape[0]

    result = Unmixing(names=component_names(group, n_components), attrs=dict(group.attrs))
    result.abundance, result.spectra = abundance, spectra
    if abundance is not None:
        result.abundance_units = str(group["abundance"].attrs.get("units", "a.u."))
    result.spectra_init = _array(group, "spectra_init")
    result.residual = _array(group, "residual")
    if result.residual is not None:
        result.residual_attrs = dict(group["residual"].attrs)
    result.loss = _array(group, "loss")
    if result.loss is not None:
        result.loss_attrs = dict(group["loss"].attrs)

    if "sweep" in group:
        sweep = group["sweep"]
        if all(name in sweep for name in ("targets", "n_zeroed", "spectra_distance")):
            result.sweep = Sweep(
                targets=np.asarray(sweep["targets"][:], dtype=np.float64),
                n_zeroed=np.asarray(sweep["n_zeroed"][:]),
                spectra_distance=np.asarray(sweep["spectra_distance"][:], dtype=np.float64),
                abundance=_array(sweep, "abundance"),
            )
        else:
            log.warning("%s/unmixing/sweep lacks targets, n_zeroed or spectra_distance; no sweep figure", store.path)
    return result


def per_component(value: Any, n_components: int) -> list[Any]:
    """Spread an attribute that is one value for all components, or one per component, into a list."""
    if isinstance(value, (list, tuple)) and len(value) == n_components:
        return list(value)
    return [value] * n_components


def _format_number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class FigureEntry:
    """A figure file of the report folder and its caption in index.html."""

    file: str
    caption: str


def loss_iterations(unmixing: Unmixing) -> np.ndarray:
    """Return the iteration of each loss entry: 0 (before the first), then every ``every_iterations``, then the last."""
    n_entries = len(unmixing.loss)
    iterations = np.arange(n_entries) * int(unmixing.loss_attrs.get("every_iterations", 1))
    if "n_iter" in unmixing.attrs and n_entries > 1:
        iterations[-1] = int(unmixing.attrs["n_iter"])
    return iterations


def _raw_figures(store: ScanStore, map_axes: MapAxes, output: Path) -> list[FigureEntry]:
    summary = summarise_raw(store)
    if summary is None:
        log.warning("%s has no acquired line; no raw figure", store.path)
        return []
    # The importer fills an imported cube's laser section with defaults, not with the laser used.
    laser_nm = None
    if not store.attrs.get("imported_from"):
        laser_nm = ((store.attrs.get("config") or {}).get("laser") or {}).get("wavelength_nm")
    figures.plot_raw(
        summary.mean_image,
        map_axes,
        store.wavelengths_nm(),
        summary.mean_spectrum,
        summary.bright_spectrum,
        output / "raw.png",
        n_lines_done=summary.n_lines_done,
        dark_subtracted=store.dark() is not None,
        laser_wavelength_nm=laser_nm,
    )
    return [FigureEntry("raw.png", "Raw data: mean over wavelength of each pixel, and the mean spectrum.")]


def _abundance_titles(unmixing: Unmixing) -> list[str]:
    n = len(unmixing.names)
    targets = per_component(unmixing.attrs.get("sparsity_target"), n)
    achieved = per_component(unmixing.attrs.get("sparsity_achieved"), n)
    titles = []
    for name, target, value in zip(unmixing.names, targets, achieved):
        lines = [name]
        if value is not None:
            lines.append(f"sparsity {_format_number(value)}" + (f" (target {_format_number(target)})" if target is not None else ""))
        elif target is not None:
            lines.append(f"sparsity target {_format_number(target)}")
        titles.append("\n".join(lines))
    return titles


def _unmixing_figures(store: ScanStore, unmixing: Unmixing, map_axes: MapAxes, output: Path) -> list[FigureEntry]:
    entries = []
    wavelengths_nm = store.wavelengths_nm()
    if unmixing.spectra is not None:
        figures.plot_spectra(
            wavelengths_nm,
            unmixing.spectra,
            unmixing.names,
            output / "spectra.png",
            spectra_init=unmixing.spectra_init,
            truth_spectra=truth_spectra_by_name(store, unmixing.names),
        )
        entries.append(FigureEntry("spectra.png", "Component spectra: fitted (solid), initial (dashed), truth (dotted)."))
    if unmixing.abundance is not None:
        maps = [[unmixing.abundance[..., index] for index in range(len(unmixing.names))]]
        figures.plot_map_grid(
            maps, [_abundance_titles(unmixing)], map_axes, output / "abundance.png",
            colour_label=f"abundance ({unmixing.abundance_units})", suptitle="Abundance maps",
        )
        entries.append(FigureEntry("abundance.png", "Abundance (weight) map of each component in stage coordinates."))
    if unmixing.residual is not None:
        residual = unmixing.residual
        signed = bool(np.nanmin(residual) < 0)
        name = str(unmixing.residual_attrs.get("long_name", "residual"))
        figures.plot_map_grid(
            [[residual]], [[name]], map_axes, output / "residual.png",
            colour_label=f"residual ({unmixing.residual_attrs.get('units', 'counts')})",
            suptitle="Residual of the fit", diverging=signed,
        )
        entries.append(FigureEntry("residual.png", f"Residual map: {name}."))
    if unmixing.loss is not None and len(unmixing.loss):
        n_iter = unmixing.attrs.get("n_iter", len(unmixing.loss) - 1)
        converged = unmixing.attrs.get("converged")
        if converged is None:
            state = "convergence not recorded"
        else:
            state = "converged" if converged else "stopped at the iteration cap"
        figures.plot_loss(
            unmixing.loss,
            loss_iterations(unmixing),
            output / "loss.png",
            subtitle=f"{n_iter} iterations, {state}",
            loss_label=str(unmixing.loss_attrs.get("long_name", "loss")),
        )
        entries.append(FigureEntry("loss.png", "Loss at each iteration (log scale)."))
    if unmixing.sweep is not None:
        entries += _sweep_figures(unmixing, map_axes, output)
    return entries


def _sweep_figures(unmixing: Unmixing, map_axes: MapAxes, output: Path) -> list[FigureEntry]:
    sweep = unmixing.sweep
    n_pixels = len(map_axes.x) * len(map_axes.y)
    figures.plot_sweep_curves(
        sweep.targets, sweep.n_zeroed, sweep.spectra_distance, unmixing.names, output / "sweep.png", n_pixels=n_pixels
    )
    entries = [FigureEntry("sweep.png", "Sparsity sweep: zeroed pixels and spectra distance against the target.")]
    if sweep.abundance is None:
        return entries
    target_columns = np.unique(np.linspace(0, len(sweep.targets) - 1, min(len(sweep.targets), _MAX_SWEEP_COLUMNS)).round().astype(int))
    maps = [[sweep.abundance[target, ..., index] for target in target_columns] for index in range(len(unmixing.names))]
    titles = [[f"target {sweep.targets[target]:.2f}" if index == 0 else "" for target in target_columns] for index in range(len(unmixing.names))]
    subset = "" if len(target_columns) == len(sweep.targets) else f" ({len(target_columns)} of {len(sweep.targets)} targets)"
    figures.plot_map_grid(
        maps, titles, map_axes, output / "sweep_maps.png",
        colour_label=f"abundance ({unmixing.abundance_units})", suptitle=f"Abundance per sparsity target{subset}",
        row_labels=unmixing.names, limits="row",
    )
    entries.append(FigureEntry("sweep_maps.png", "Abundance maps for each sparsity target; colours compare along a row."))
    return entries


def truth_spectra_by_name(store: ScanStore, names: list[str]) -> dict[str, np.ndarray]:
    """Return the ground-truth spectra of the components whose names the truth shares."""
    if "truth" not in store.group or "spectra" not in store.group["truth"]:
        return {}
    truth = store.group["truth"]
    spectra = np.asarray(truth["spectra"][:])
    truth_names = component_names(truth, spectra.shape[0])
    return {name: spectra[truth_names.index(name)] for name in names if name in truth_names}


def pearson_r(a: np.ndarray, b: np.ndarray) -> float:
    """Return the correlation of two maps over the pixels finite in both, NaN when either is constant."""
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def _truth_figures(store: ScanStore, unmixing: Unmixing, map_axes: MapAxes, output: Path) -> list[FigureEntry]:
    truth = store.group["truth"]
    if "abundance" not in truth or unmixing.abundance is None:
        return []
    truth_abundance = np.asarray(truth["abundance"][:])
    truth_names = component_names(truth, truth_abundance.shape[-1])
    shared = [name for name in unmixing.names if name in truth_names]
    if not shared:
        log.warning("no component of the unmixing (%s) is named in truth/ (%s); no truth figure", unmixing.names, truth_names)
        return []
    truth_maps, unmixed_maps, truth_titles, unmixed_titles = [], [], [], []
    for name in shared:
        expected = truth_abundance[..., truth_names.index(name)]
        found = unmixing.abundance[..., unmixing.names.index(name)]
        truth_maps.append(expected)
        unmixed_maps.append(found)
        truth_titles.append(name)
        unmixed_titles.append(f"{name}\nPearson r = {pearson_r(expected, found):.4f}")
    figures.plot_map_grid(
        [truth_maps, unmixed_maps], [truth_titles, unmixed_titles], map_axes, output / "truth.png",
        colour_label="abundance (a.u.)", suptitle="Ground truth (top) and unmixed abundance (bottom)",
        row_labels=["truth", "unmixed"],
    )
    return [FigureEntry("truth.png", "Ground truth of the simulated phantom (top) above the unmixed maps (bottom).")]


# ---------------------------------------------------------------------------------- index.html

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


def write_report(store: str | Path, output_dir: str | Path | None = None) -> Path:
    """Write the figures of a store and an ``index.html`` that shows them with the scan's metadata.

    Parameters
    ----------
    store : path
        A scan store, with or without ``unmixing/``; imported stores work too.
    output_dir : path, optional
        The folder for the figures, created if missing; default ``<store>-report`` next to the store.

    Returns
    -------
    Path
        The report folder.

    Raises
    ------
    StoreError
        If ``store`` is missing or not a scan store.
    """
    store_path = Path(store)
    scan = ScanStore.open(store_path)
    output = Path(output_dir) if output_dir is not None else default_report_dir(store_path)
    output.mkdir(parents=True, exist_ok=True)
    map_axes = map_axes_of(scan)

    entries = _raw_figures(scan, map_axes, output)
    unmixing = read_unmixing(scan)
    if unmixing is not None:
        entries += _unmixing_figures(scan, unmixing, map_axes, output)
        if "truth" in scan.group:
            entries += _truth_figures(scan, unmixing, map_axes, output)
    write_index(output / "index.html", scan, entries, unmixing.attrs if unmixing else None)
    log.info("report of %s: %d figures in %s", store_path, len(entries), output)
    return output


# ---------------------------------------------------------------------------------- preview


class PreviewWriter:
    """Redraw ``<store>-preview.png`` with the lines acquired so far, every ``every`` lines.

    Pass an instance as ``run_scan(..., on_line=PreviewWriter(store, every=10))``. A call only
    starts a drawing thread and returns, so the scan loop does not wait for matplotlib. A drawing
    took 0.1 to 0.3 s on a 2-core test machine. Requests made while a drawing runs are merged
    into one more drawing. Each drawing reads only the lines written since the previous one.
    A call logs its failures and never raises them into the scan.

    Parameters
    ----------
    store_path : path
        The store the scan writes.
    every : int
        Redraw after every ``every`` lines, and after the store's last line. The drawing after the
        last line waits up to :data:`FINAL_WAIT_S` for the writer to store every line, and the
        program's exit waits for that drawing (its thread is not a daemon).
    """

    def __init__(self, store_path: str | Path, every: int) -> None:
        if every < 1:
            raise ValueError(f"preview interval must be at least 1 line, got {every}")
        self.store_path = Path(store_path)
        self.every = every
        self.path = preview_path(self.store_path)
        self._calls = 0
        self._failures = 0
        self._n_lines: int | None = None
        self._lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._pending = False
        self._last_line_queued = False
        self._store: ScanStore | None = None
        self._image = np.empty((0, 0))
        self._dark_mean: np.ndarray | None = None
        self._read = np.zeros(0, dtype=bool)

    def __call__(self, line_index: int) -> None:
        try:
            self._calls += 1
            if self._store is None:
                # Opening reads only metadata, and it gives the index of the last line.
                self._open()
            if line_index == self._n_lines - 1:
                self._last_line_queued = True
            elif self._calls % self.every:
                return
            with self._lock:
                if self._worker is not None:
                    self._pending = True
                    return
                # Not a daemon: a drawing under way at the end of the scan finishes before exit.
                self._worker = threading.Thread(target=self._draw_until_idle, name="fluoscan-preview")
                self._worker.start()
        except Exception as exc:  # noqa: BLE001 - any failure here must leave the scan running
            self._log_failure(exc)

    @property
    def image(self) -> np.ndarray:
        """The preview's (y, x) image in counts: dark-subtracted mean over wavelength, NaN where not read yet."""
        return self._image

    def wait(self, timeout_s: float) -> bool:
        """Wait for the drawing under way, if any; return False if it is still running after ``timeout_s``."""
        with self._lock:
            worker = self._worker
        if worker is not None:
            worker.join(timeout_s)
            return not worker.is_alive()
        return True

    def _draw_until_idle(self) -> None:
        while True:
            try:
                self.draw()
                if self._last_line_queued and self._wait_for_unread_lines():
                    # The scan calls the preview when a line is queued for the writer, so the last
                    # lines reach the disk after the last call: draw once more when they have.
                    self.draw()
            except Exception as exc:  # noqa: BLE001 - logged; the next request tries again
                self._log_failure(exc)
            with self._lock:
                if not self._pending:
                    self._worker = None
                    return
                self._pending = False

    def _wait_for_unread_lines(self) -> bool:
        """Wait until every line is written, up to FINAL_WAIT_S; return True if any line is unread."""
        deadline = time.monotonic() + FINAL_WAIT_S
        done = self._store.line_done()
        while not done.all() and time.monotonic() < deadline:
            time.sleep(_FINAL_POLL_S)
            done = self._store.line_done()
        return bool((done & ~self._read).any())

    def _log_failure(self, exc: Exception) -> None:
        self._failures += 1
        level = logging.WARNING if self._failures == 1 or self._failures % 100 == 0 else logging.DEBUG
        log.log(level, "scan preview %s not updated (failure %d): %s", self.path, self._failures, exc)

    def _open(self) -> ScanStore:
        if self._store is None:
            store = ScanStore.open(self.store_path)
            n_lines, n_points, _ = store.shape
            self._image = np.full((n_lines, n_points), np.nan)
            self._read = np.zeros(n_lines, dtype=bool)
            dark = store.dark()
            self._dark_mean = dark.mean(axis=1) if dark is not None else None
            self._store, self._n_lines = store, n_lines
        return self._store

    def draw(self) -> Path:
        """Read the lines written since the last drawing and redraw the preview now, in this thread."""
        store = self._open()
        new = store.line_done() & ~self._read
        for block in _done_blocks(new):
            lines = np.flatnonzero(new[block]) + block.start
            means = np.asarray(store.raw[block], dtype=np.float64).mean(axis=2)[lines - block.start]
            self._image[lines] = means - self._dark_mean if self._dark_mean is not None else means
            self._read[lines] = True

        map_axes = map_axes_of(store)
        width, height = figures.map_panel_size(map_axes, 1)
        figure = Figure(figsize=(width, height + 0.3), layout="constrained")
        n_done, n_lines = int(self._read.sum()), len(self._read)
        figures.draw_map(
            figure,
            figure.subplots(),
            self._image,
            map_axes,
            title=f"{self.store_path.name}: {n_done} of {n_lines} lines\nmean over wavelength",
            colour_label="counts",
            limits=figures.robust_limits(self._image),
        )
        partial = self.path.with_name(f".{self.path.name}.partial")
        figure.savefig(partial, dpi=80, format="png")
        os.replace(partial, self.path)
        return self.path
