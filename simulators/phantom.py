"""A seeded mouse phantom with its ground truth: the scene of the simulated spectrometer.

Coordinates are the animal's, in mm: y along the body (the stage axis), x across it (along the
spectrograph slit). The phantom is

- a body about 90 mm long and 30 mm wide, an ellipse that narrows towards the nose (small y), with a
  soft edge and tissue autofluorescence that varies smoothly over the body, brighter over the gut
  (chlorophyll in rodent food);
- two capillary tubes under the skin, filled with ICG lipid nanoparticles and Alexa Fluor 750,
  6 mm long and 1 mm wide along y, blurred by the tissue above them with a Gaussian whose width
  grows with ``tube_depth_mm``;
- emission spectra from :func:`fluoscan.unmixing.library.library_spectrum`, times the edge of the
  700 nm long-pass filter that blocks the 690 nm laser line.

Abundance is dimensionless: 1 means ``photons_per_mw_s`` photoelectrons per detector pixel per mW of
laser per second, at the peak of the component's unfiltered spectrum. The brightness defaults make
the demo scan (0.1 s, 40 mW, 3 x 4 binned pixels) record autofluorescence of a few thousand counts
and marker peaks near the top of the 16-bit range, so that a few pixels at the centre of the ICG
tube saturate.

Determinism: the frame of line i depends only on (seed, configuration, i). The phantom is drawn at
the line's nominal position ``y_start_mm + i * step_mm`` and the noise comes from a generator seeded
with (seed, i); dark frames use their own sequence (seed, "dark", k).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.special import erf

from fluoscan.acquisition.config import PhantomConfig
from fluoscan.unmixing.library import library_spectrum

log = logging.getLogger(__name__)

COMPONENTS: tuple[str, ...] = ("autofluorescence", "icg_lnp", "af750")
MARKERS: tuple[str, ...] = ("icg_lnp", "af750")

LONG_PASS_EDGE_NM = 700.0
LONG_PASS_WIDTH_NM = 1.5

# Words folded into the noise seeds, so that line and dark sequences never share a generator.
_LINE_STREAM = 0x6C696E65
_DARK_STREAM = 0x6461726B
# Spectra are scaled by their peak on this grid, so that their height does not depend on the detector's range.
_REFERENCE_GRID_NM = np.arange(600.0, 1001.0, 1.0)


@dataclass(frozen=True)
class Tube:
    """A capillary tube under the skin, lying along y."""

    marker: str
    x_mm: float
    y_mm: float
    length_mm: float = 6.0
    width_mm: float = 1.0
    # Abundance inside the tube before the tissue blur (see the module documentation for units).
    abundance: float = 0.3


@dataclass(frozen=True)
class MouseLayout:
    """The positions and sizes of the body, the gut and the tubes, in mm, and their brightness."""

    centre_x_mm: float = 0.0
    centre_y_mm: float = 50.0
    length_mm: float = 90.0
    width_mm: float = 30.0
    edge_mm: float = 0.6
    # Fraction by which the body narrows from the middle to the nose.
    nose_taper: float = 0.45
    autofluorescence: float = 0.0075
    gut_x_mm: float = 2.0
    gut_y_mm: float = 68.0
    gut_sigma_mm: float = 8.0
    gut_gain: float = 1.0
    tubes: tuple[Tube, ...] = field(
        default_factory=lambda: (
            Tube("icg_lnp", x_mm=-6.0, y_mm=38.0, abundance=0.25),
            Tube("af750", x_mm=6.0, y_mm=58.0, abundance=0.175),
        )
    )
    # Blur sigma of a tube at the skin surface, and its growth per mm of depth.
    blur_at_surface_mm: float = 0.15
    blur_per_depth: float = 0.5


def long_pass(wavelengths_nm: np.ndarray) -> np.ndarray:
    """Transmission of the emission filter: a logistic edge, 50 % at 700 nm, 1e-3 at the 690 nm laser line."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(wavelengths_nm, dtype=np.float64) - LONG_PASS_EDGE_NM) / LONG_PASS_WIDTH_NM))


def _box_blurred(u_mm: np.ndarray, centre_mm: float, width_mm: float, sigma_mm: float) -> np.ndarray:
    """Evaluate a top-hat of ``width_mm`` convolved with a Gaussian of ``sigma_mm`` at ``u_mm``."""
    scale = np.sqrt(2.0) * sigma_mm
    return 0.5 * (erf((u_mm - centre_mm + width_mm / 2) / scale) - erf((u_mm - centre_mm - width_mm / 2) / scale))


class MousePhantom:
    """The simulated animal: abundance maps, emission spectra, photoelectron rates and noise seeds.

    Parameters
    ----------
    config : PhantomConfig
        Markers present, tube depth, brightness and the detector response.
    seed : int
        Noise seed of the scan.
    y_start_mm, step_mm : float
        The scan raster, which turns a stage position into a line index.
    layout : MouseLayout, optional
        Geometry and brightness of the body and the tubes.
    """

    def __init__(
        self,
        config: PhantomConfig,
        *,
        seed: int,
        y_start_mm: float,
        step_mm: float,
        layout: MouseLayout | None = None,
    ) -> None:
        unknown = sorted(set(config.markers) - set(MARKERS))
        if unknown:
            raise ValueError(f"unknown phantom markers {unknown}; choose from {list(MARKERS)}")
        self.config = config
        self.seed = int(seed)
        self.y_start_mm = float(y_start_mm)
        self.step_mm = float(step_mm)
        self.layout = layout or MouseLayout()
        self.components: tuple[str, ...] = tuple(name for name in COMPONENTS if name == "autofluorescence" or name in config.markers)
        self._spectra_cache: tuple[bytes, np.ndarray] | None = None

    # ------------------------------------------------------------------ raster and noise

    def line_index(self, y_mm: float) -> int:
        """Return the index of the raster line nearest to a stage position."""
        return int(round((float(y_mm) - self.y_start_mm) / self.step_mm))

    def line_position_mm(self, index: int) -> float:
        return self.y_start_mm + index * self.step_mm

    def line_rng(self, index: int) -> np.random.Generator:
        """Return the noise generator of line ``index``: the same for every run with the same seed."""
        return np.random.default_rng([self.seed, _LINE_STREAM, index & 0xFFFF_FFFF_FFFF_FFFF])

    def dark_rng(self, number: int) -> np.random.Generator:
        """Return the noise generator of the ``number``-th dark frame (from 0)."""
        return np.random.default_rng([self.seed, _DARK_STREAM, number])

    # ------------------------------------------------------------------ the animal

    def body_mask(self, x_mm: np.ndarray, y_mm: float) -> np.ndarray:
        """Return the body's outline as a soft mask in [0, 1] along x at one y."""
        layout = self.layout
        u = (y_mm - layout.centre_y_mm) / (layout.length_mm / 2)
        towards_nose = np.clip(-u, 0.0, 1.0)
        half_width = layout.width_mm / 2 * (1.0 - layout.nose_taper * towards_nose**2)
        rho = np.sqrt(((np.asarray(x_mm) - layout.centre_x_mm) / half_width) ** 2 + u**2)
        return 1.0 / (1.0 + np.exp(-(1.0 - rho) * (layout.width_mm / 2) / layout.edge_mm))

    def abundance(self, x_mm: np.ndarray, y_mm: float) -> np.ndarray:
        """Return the abundance of each component along x at one y, shape (len(x_mm), n_components)."""
        layout = self.layout
        x_mm = np.asarray(x_mm, dtype=np.float64)
        result = np.zeros((x_mm.size, len(self.components)))

        texture = 0.8 + 0.2 * np.sin(2 * np.pi * y_mm / 23.0 + 0.7) * np.cos(2 * np.pi * x_mm / 17.0)
        gut = layout.gut_gain * np.exp(-((x_mm - layout.gut_x_mm) ** 2 + (y_mm - layout.gut_y_mm) ** 2) / (2 * layout.gut_sigma_mm**2))
        result[:, 0] = (
            self.config.autofluorescence_brightness * layout.autofluorescence * self.body_mask(x_mm, y_mm) * (texture + gut)
        )

        sigma_mm = layout.blur_at_surface_mm + layout.blur_per_depth * self.config.tube_depth_mm
        for tube in layout.tubes:
            if tube.marker not in self.components:
                continue
            across = _box_blurred(x_mm, tube.x_mm, tube.width_mm, sigma_mm)
            along = _box_blurred(np.asarray(y_mm), tube.y_mm, tube.length_mm, sigma_mm)
            result[:, self.components.index(tube.marker)] += self.config.marker_brightness * tube.abundance * across * along
        return result

    def emission_spectra(self, wavelengths_nm: np.ndarray) -> np.ndarray:
        """Return each component's filtered emission at the given wavelengths, shape (n_components, n_wavelengths).

        Each library spectrum is scaled to a peak of 1 on a fixed 600-1000 nm grid before the long-pass
        filter, so that its height does not depend on the detector's range.
        """
        wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64)
        key = wavelengths_nm.tobytes()
        if self._spectra_cache is not None and self._spectra_cache[0] == key:
            return self._spectra_cache[1]
        grid = np.concatenate([wavelengths_nm, _REFERENCE_GRID_NM])
        spectra = np.stack([library_spectrum(name, grid)[: wavelengths_nm.size] for name in self.components])
        spectra *= long_pass(wavelengths_nm)[None, :]
        self._spectra_cache = (key, spectra)
        return spectra

    def photoelectrons_per_abundance(self, exposure_s: float, power_mw: float) -> float:
        return self.config.photons_per_mw_s * power_mw * exposure_s

    def expected_photoelectrons(
        self, line_index: int, x_rows_mm: np.ndarray, wavelengths_nm: np.ndarray, exposure_s: float, power_mw: float
    ) -> np.ndarray:
        """Return the expected photoelectrons from light at each detector pixel, shape (rows, columns).

        Row r images the animal at ``x_rows_mm[r]`` on line ``line_index``; column k receives ``wavelengths_nm[k]``.
        """
        abundance = self.abundance(x_rows_mm, self.line_position_mm(line_index))
        spectra = self.emission_spectra(wavelengths_nm)
        return self.photoelectrons_per_abundance(exposure_s, power_mw) * (abundance @ spectra)

    # ------------------------------------------------------------------ ground truth

    def ground_truth(
        self,
        positions_mm: np.ndarray,
        *,
        x_rows_mm: np.ndarray,
        track_rows: Sequence[tuple[int, int]],
        detector_wavelengths_nm: np.ndarray,
        columns: tuple[int, int, int],
        exposure_s: float,
        power_mw: float,
    ) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Return the abundance and spectra that reproduce the dark-subtracted cube.

        ``raw - dark`` of line y, point x and wavelength bin b is, apart from noise and saturation,
        ``sum_c abundance[y, x, c] * spectra[c, b]``. Each spectrum is the filtered emission summed
        over the detector columns of each bin, scaled to a peak of 1; abundance is in detector
        counts at that peak. Like the camera, each point sums the phantom over its track's rows.

        Parameters
        ----------
        positions_mm : ndarray of shape (n_lines,)
            Stage positions of the lines; each is drawn at its nearest raster line.
        x_rows_mm : ndarray of shape (detector_height,)
            Position along the slit imaged by each detector row, row 0 at the top.
        track_rows : sequence of (start, stop)
            Detector rows, counted from the top, summed into each point.
        detector_wavelengths_nm : ndarray of shape (detector_width,)
            Wavelength of each detector column.
        columns : (start, stop, bin)
            Detector columns kept and how many are summed into one wavelength bin.
        exposure_s, power_mw : float
            Exposure and laser power of the scan.

        Returns
        -------
        abundance : ndarray of shape (n_lines, n_points, n_components), float64
        spectra : ndarray of shape (n_components, n_wavelengths), float64
        names : list of str
        """
        start, stop, column_bin = columns
        emission = self.emission_spectra(detector_wavelengths_nm)[:, start:stop]
        binned = emission.reshape(len(self.components), -1, column_bin).sum(axis=2)
        peak = binned.max(axis=1)
        peak[peak == 0] = 1.0
        spectra = binned / peak[:, None]

        counts_per_abundance = self.photoelectrons_per_abundance(exposure_s, power_mw) / self.config.gain_e_per_count
        positions_mm = np.atleast_1d(np.asarray(positions_mm, dtype=np.float64))
        abundance = np.zeros((positions_mm.size, len(track_rows), len(self.components)))
        for line, y_mm in enumerate(positions_mm):
            rows = self.abundance(x_rows_mm, self.line_position_mm(self.line_index(y_mm)))
            for point, (first, last) in enumerate(track_rows):
                abundance[line, point] = rows[first:last].sum(axis=0)
        abundance *= counts_per_abundance * peak[None, None, :]
        return abundance, spectra, list(self.components)
