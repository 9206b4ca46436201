"""Figures of a scan report: maps in stage coordinates, spectra, loss and the sparsity sweep.

Every function builds a :class:`matplotlib.figure.Figure` directly and saves it as PNG, so nothing
here touches pyplot's global state or needs a display: figures render with the Agg canvas.
Colour limits come from percentiles of the data, not its extremes, so that one hot pixel does not
wash out a map.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import MaxNLocator

log = logging.getLogger(__name__)

DPI = 110
# Default percentiles for colour limits: ignore the darkest 1 % and the brightest 0.1 % of pixels.
# A capillary tube covers about 0.5 % of a mouse scan, so a lower upper percentile would clip it.
LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.9
# Largest figure height in inches: taller figures do not fit a laptop screen at DPI.
MAX_FIGURE_HEIGHT_IN = 15.0
MAP_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
MISSING_COLOUR = "0.85"


@dataclass(frozen=True)
class MapAxes:
    """Coordinates of the pixel centres of a (y, x) map and how to label them.

    Attributes
    ----------
    x, y : ndarray
        Pixel-centre coordinates along x (points on the slit) and y (lines).
    x_units, y_units : str
        "mm", or "point index" / "line index" when the pitch is unknown.
    """

    x: np.ndarray
    y: np.ndarray
    x_units: str
    y_units: str

    @property
    def equal_aspect(self) -> bool:
        """True when both axes are lengths in the same unit, so that the map keeps the animal's shape."""
        return self.x_units == self.y_units == "mm"

    def extent(self) -> tuple[float, float, float, float]:
        """Return (left, right, bottom, top) of the pixel edges for ``imshow(origin="lower")``.

        NOTE: pixels are drawn evenly spaced between the first and the last coordinate, so uneven
        read-back positions (micrometres for a stepper stage) do not show in a map.
        """
        return (*_edges(self.x), *_edges(self.y))

    def height_over_width(self) -> float:
        """Return the map's drawn height over its width."""
        if self.equal_aspect:
            left, right, bottom, top = self.extent()
            return abs(top - bottom) / max(abs(right - left), 1e-12)
        # Index axes: draw square pixels, within bounds that keep long, thin scans readable.
        return float(np.clip(len(self.y) / max(len(self.x), 1), 0.5, 3.0))


def _edges(centres: np.ndarray) -> tuple[float, float]:
    if len(centres) < 2:
        centre = float(centres[0]) if len(centres) else 0.0
        return centre - 0.5, centre + 0.5
    half_step = (float(centres[-1]) - float(centres[0])) / (len(centres) - 1) / 2
    return float(centres[0]) - half_step, float(centres[-1]) + half_step


def robust_limits(
    values: np.ndarray,
    *,
    low: float = LOW_PERCENTILE,
    high: float = HIGH_PERCENTILE,
    from_zero: bool = False,
) -> tuple[float, float]:
    """Return colour limits from percentiles of the finite values.

    Parameters
    ----------
    values : ndarray
        The map, any shape; NaN and infinite values are ignored.
    low, high : float
        Percentiles for the lower and upper limit.
    from_zero : bool
        Start at 0 and take the upper percentile of the non-zero values only. Sparse abundance maps
        need this: when most pixels are exactly 0, a percentile of all pixels would be 0 too.

    Returns
    -------
    (vmin, vmax) with vmin < vmax, also for empty or constant maps.
    """
    finite = np.asarray(values, dtype=np.float64)
    finite = finite[np.isfinite(finite)]
    if from_zero:
        positive = finite[finite > 0]
        vmin, vmax = 0.0, float(np.percentile(positive, high)) if positive.size else 1.0
    elif finite.size:
        vmin, vmax = (float(v) for v in np.percentile(finite, [low, high]))
    else:
        vmin, vmax = 0.0, 1.0
    if not vmax > vmin:
        # A constant map: widen the range around its value so that the colour bar stays readable.
        span = abs(vmin) * 0.05 or 1.0
        vmin, vmax = vmin - span, vmax + span
    return vmin, vmax


def symmetric_limits(values: np.ndarray, high: float = HIGH_PERCENTILE) -> tuple[float, float]:
    """Return limits (-v, v) from a percentile of the absolute values, for a diverging colour map."""
    finite = np.abs(np.asarray(values, dtype=np.float64))
    finite = finite[np.isfinite(finite)]
    v = float(np.percentile(finite, high)) if finite.size else 1.0
    return (-v, v) if v > 0 else (-1.0, 1.0)


def save_figure(figure: Figure, path: Path) -> Path:
    """Save a figure as PNG through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    figure.savefig(partial, dpi=DPI, format="png")
    os.replace(partial, path)
    log.debug("wrote %s", path)
    return path


def _axis_label(name: str, units: str) -> str:
    return f"{name} ({units})"


def draw_map(
    figure: Figure,
    ax: Axes,
    image: np.ndarray,
    map_axes: MapAxes,
    *,
    title: str,
    colour_label: str,
    limits: tuple[float, float],
    cmap: str = MAP_CMAP,
    colour_bar: bool = True,
) -> AxesImage:
    """Draw one (y, x) map in stage coordinates, with its title, axis labels and colour bar."""
    colour_map = matplotlib.colormaps[cmap].with_extremes(bad=MISSING_COLOUR)
    artist = ax.imshow(
        np.asarray(image, dtype=np.float64),
        origin="lower",
        extent=map_axes.extent(),
        aspect="equal" if map_axes.equal_aspect else "auto",
        interpolation="nearest",
        cmap=colour_map,
        vmin=limits[0],
        vmax=limits[1],
    )
    bottom, top = map_axes.extent()[2:]
    # The first line is at the bottom whatever the stage direction, so y always grows upwards.
    ax.set_ylim(min(bottom, top), max(bottom, top))
    ax.set_title(title, fontsize=10)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=4, steps=[1, 2, 5, 10]))
    ax.set_xlabel(_axis_label("x", map_axes.x_units))
    ax.set_ylabel(_axis_label("y", map_axes.y_units))
    if colour_bar:
        figure.colorbar(artist, ax=ax, label=colour_label, shrink=0.9)
    return artist


def map_panel_size(map_axes: MapAxes, n_rows: int) -> tuple[float, float]:
    """Return (width, height) in inches for one map panel with its title, labels and colour bar."""
    ratio = map_axes.height_over_width()
    longest_in = min(4.5, (MAX_FIGURE_HEIGHT_IN - 0.6) / n_rows - 0.9)
    if ratio >= 1:
        map_height, map_width = longest_in, max(longest_in / ratio, 1.0)
    else:
        map_width, map_height = longest_in, max(longest_in * ratio, 1.0)
    # The colour bar with 5-digit ticks and its label, the y ticks and a two-line y-axis label need
    # about 2.3 in beside the map, the title and the x-axis label about 0.9 in above and below it.
    return max(map_width + 2.3, 3.2), map_height + 0.9


def plot_map_grid(
    maps: Sequence[Sequence[np.ndarray | None]],
    titles: Sequence[Sequence[str]],
    map_axes: MapAxes,
    path: Path,
    *,
    colour_label: str,
    suptitle: str,
    row_labels: Sequence[str] | None = None,
    limits: str = "each",
    from_zero: bool = True,
    diverging: bool = False,
) -> Path:
    """Save a grid of maps that share their axes, with one colour bar per panel or per row.

    Parameters
    ----------
    maps : rows of (y, x) arrays; None leaves a panel empty
    titles : rows of panel titles, the same shape as ``maps``
    row_labels : one label per row, put before the y-axis label of the row's first panel
    limits : "each" or "row"
        "each" scales every panel on its own; "row" shares the colour limits and one colour bar
        along a row, so that the panels of a row compare by colour (a sparsity sweep).
    from_zero, diverging : bool
        Colour limits for non-negative maps (0 to a percentile of the non-zero values) or for signed
        maps (symmetric about 0, diverging colour map).
    """
    n_rows, n_cols = len(maps), max(len(row) for row in maps)
    panel_width, panel_height = map_panel_size(map_axes, n_rows)
    if limits == "row":
        # Without a colour bar beside every panel, a panel needs less room than map_panel_size gives.
        panel_width = max(panel_width - 1.3, 1.9)
    figure = Figure(figsize=(panel_width * n_cols + 0.8, panel_height * n_rows + 0.6), layout="constrained")
    axes = figure.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True)
    cmap = DIVERGING_CMAP if diverging else MAP_CMAP

    def limits_of(values: np.ndarray) -> tuple[float, float]:
        return symmetric_limits(values) if diverging else robust_limits(values, from_zero=from_zero)

    for row in range(n_rows):
        present = [image for image in maps[row] if image is not None]
        shared = limits_of(np.concatenate([np.ravel(m) for m in present])) if limits == "row" and present else None
        artist = None
        for col in range(n_cols):
            ax = axes[row, col]
            image = maps[row][col] if col < len(maps[row]) else None
            if image is None:
                ax.set_axis_off()
                continue
            artist = draw_map(
                figure,
                ax,
                image,
                map_axes,
                title=titles[row][col],
                colour_label=colour_label,
                limits=shared or limits_of(image),
                cmap=cmap,
                colour_bar=shared is None,
            )
            ax.label_outer()
        if row_labels is not None:
            axes[row, 0].set_ylabel(f"{row_labels[row]}\n{axes[row, 0].get_ylabel()}")
        if shared is not None and artist is not None:
            figure.colorbar(artist, ax=list(axes[row, :]), label=colour_label, shrink=0.9)
    figure.suptitle(suptitle)
    return save_figure(figure, path)


def plot_raw(
    mean_image: np.ndarray,
    map_axes: MapAxes,
    wavelengths_nm: np.ndarray,
    mean_spectrum: np.ndarray,
    bright_spectrum: np.ndarray | None,
    path: Path,
    *,
    n_lines_done: int,
    dark_subtracted: bool,
    laser_wavelength_nm: float | None = None,
) -> Path:
    """Save the mean-over-wavelength image beside the mean spectrum of the acquired pixels."""
    dark_note = "dark subtracted" if dark_subtracted else "no dark frame recorded"
    panel_width, panel_height = map_panel_size(map_axes, 1)
    figure = Figure(figsize=(panel_width + 5.0, max(panel_height, 3.6) + 0.6), layout="constrained")
    image_ax, spectrum_ax = figure.subplots(1, 2, width_ratios=[panel_width, 5.0])
    n_lines = mean_image.shape[0]
    title = f"Mean over wavelength, {dark_note}"
    if n_lines_done < n_lines:
        title += f"\n{n_lines_done} of {n_lines} lines acquired (grey: missing)"
    draw_map(
        figure, image_ax, mean_image, map_axes, title=title, colour_label="counts", limits=robust_limits(mean_image)
    )

    spectrum_ax.plot(wavelengths_nm, mean_spectrum, label="mean of all pixels", color="C0")
    if bright_spectrum is not None:
        spectrum_ax.plot(wavelengths_nm, bright_spectrum, label="mean of the brightest 1 % of pixels", color="C3")
    if laser_wavelength_nm is not None and wavelengths_nm.min() <= laser_wavelength_nm <= wavelengths_nm.max():
        spectrum_ax.axvline(laser_wavelength_nm, color="0.5", linestyle=":", label=f"laser {laser_wavelength_nm:g} nm")
    spectrum_ax.set_title(f"Mean spectrum, {dark_note}", fontsize=10)
    spectrum_ax.set_xlabel("wavelength (nm)")
    spectrum_ax.set_ylabel("counts")
    spectrum_ax.grid(alpha=0.3)
    spectrum_ax.legend(fontsize=9)
    figure.suptitle("Raw data")
    return save_figure(figure, path)


def _peak_normalised(spectrum: np.ndarray) -> np.ndarray:
    spectrum = np.asarray(spectrum, dtype=np.float64)
    peak = np.nanmax(np.abs(spectrum)) if spectrum.size else 0.0
    return spectrum / peak if peak > 0 else spectrum


def plot_spectra(
    wavelengths_nm: np.ndarray,
    spectra: np.ndarray,
    names: Sequence[str],
    path: Path,
    *,
    spectra_init: np.ndarray | None = None,
    truth_spectra: dict[str, np.ndarray] | None = None,
) -> Path:
    """Save each fitted spectrum (solid) with its initialisation (dashed) and the truth (dotted).

    Spectra are scaled to a peak of 1: NMF fixes a spectrum only up to a factor that moves into
    its abundance map, so shapes compare and absolute heights do not.
    """
    figure = Figure(figsize=(8.0, 4.8), layout="constrained")
    ax = figure.subplots()
    for index, name in enumerate(names):
        colour = f"C{index % 10}"
        ax.plot(wavelengths_nm, _peak_normalised(spectra[index]), color=colour, linewidth=2, label=f"{name}: fitted")
        if spectra_init is not None:
            ax.plot(
                wavelengths_nm, _peak_normalised(spectra_init[index]), color=colour, linestyle="--", label=f"{name}: initial"
            )
        if truth_spectra and name in truth_spectra:
            ax.plot(wavelengths_nm, _peak_normalised(truth_spectra[name]), color=colour, linestyle=":", label=f"{name}: truth")
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("emission (scaled to peak 1)")
    ax.set_title("Component spectra", fontsize=11)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return save_figure(figure, path)


def plot_loss(loss: np.ndarray, iterations: np.ndarray, path: Path, *, subtitle: str, loss_label: str = "loss") -> Path:
    """Save the loss against the iteration number on a log scale."""
    figure = Figure(figsize=(7.0, 4.2), layout="constrained")
    ax = figure.subplots()
    positive = np.where(np.asarray(loss, dtype=np.float64) > 0, loss, np.nan)
    ax.plot(iterations, positive, marker="." if len(loss) < 50 else None, color="C0")
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel(loss_label)
    ax.set_title(f"Loss\n{subtitle}", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    return save_figure(figure, path)


def plot_sweep_curves(
    targets: np.ndarray,
    n_zeroed: np.ndarray,
    spectra_distance: np.ndarray,
    names: Sequence[str],
    path: Path,
    *,
    n_pixels: int,
) -> Path:
    """Save zeroed pixel counts and spectra distances against the sparsity target, one line per component."""
    figure = Figure(figsize=(11.0, 4.2), layout="constrained")
    zeroed_ax, distance_ax = figure.subplots(1, 2)
    for index, name in enumerate(names):
        colour = f"C{index % 10}"
        zeroed_ax.plot(targets, n_zeroed[:, index], marker="o", color=colour, label=name)
        distance_ax.plot(targets, spectra_distance[:, index], marker="o", color=colour, label=name)
    zeroed_ax.set_title(f"Pixels set to zero (of {n_pixels})", fontsize=10)
    zeroed_ax.set_ylabel("zeroed pixels")
    distance_ax.set_title("Distance of the fitted spectrum from its initialisation", fontsize=10)
    distance_ax.set_ylabel("spectra distance")
    for ax in (zeroed_ax, distance_ax):
        ax.set_xlabel("sparsity target")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
    figure.suptitle("Sparsity sweep")
    return save_figure(figure, path)
