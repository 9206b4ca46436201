"""``fluoscan report``: figures of a scan store and an index.html, and the live scan preview.

:func:`write_report` reads a store (raw data, and ``unmixing/``, ``unmixing/sweep/`` and ``truth/``
when present) and writes PNG figures with an ``index.html`` that shows them next to the scan's
metadata. :class:`PreviewWriter` redraws ``<store>-preview.png`` during a scan.

The store is read by :mod:`fluoscan.cli.report_data` and the page is written by
:mod:`fluoscan.cli.report_html`. :class:`PreviewWriter` is defined in :mod:`fluoscan.cli.preview`
and re-exported here.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from fluoscan.acquisition.store import ScanStore
from fluoscan.cli import figures
from fluoscan.cli.figures import MapAxes
from fluoscan.cli.preview import PreviewWriter  # noqa: F401 - fluoscan.cli.main imports it from here
from fluoscan.cli.report_data import Unmixing, component_names, map_axes_of, read_unmixing, summarise_raw
from fluoscan.cli.report_html import FigureEntry, write_index

log = logging.getLogger(__name__)

# Most sparsity targets drawn as map columns; more would shrink each map below readability.
_MAX_SWEEP_COLUMNS = 6


def default_report_dir(store_path: str | Path) -> Path:
    """Return the default report folder, ``<store>-report`` next to the store."""
    store_path = Path(store_path)
    return store_path.with_name(f"{store_path.name}-report")


def per_component(value: Any, n_components: int) -> list[Any]:
    """Spread an attribute that is one value for all components, or one per component, into a list."""
    if isinstance(value, (list, tuple)) and len(value) == n_components:
        return list(value)
    return [value] * n_components


def _format_number(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else str(value)


# ---------------------------------------------------------------------------------- figures


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
