"""A seeded mouse phantom with its ground truth: the scene of the simulated spectrometer.

Coordinates are the animal's, in mm: y along the body (the stage axis), x across it (along the
spectrograph slit). The phantom is

- a body about 90 mm long and 30 mm wide, an ellipse that narrows towards the nose (small y), with a
  soft edge;
- two autofluorescence sources: the skin, everywhere on the body with a smooth texture, and
  chlorophyll from plant-based rodent food in the gut contents, ``gut_depth_mm`` under the skin;
- two capillary tubes under the skin, filled with ICG lipid nanoparticles and Alexa Fluor 750,
  6 mm long and 1 mm wide along y, blurred by the tissue above them with a Gaussian whose width
  grows with ``tube_depth_mm``;
- tissue optics: light emitted at depth d leaves the skin attenuated by exp(-mu_eff(λ) d), with an
  effective attenuation coefficient that falls from 700 nm to 900 nm, so that deeper sources look
  redder (:func:`tissue_transmission`);
- a 700 nm long-pass filter that blocks the 690 nm laser line.

The markers are drawn from :func:`fluoscan.unmixing.library.library_spectrum`, the spectra the
unmixing starts from, but the camera records them through the tissue, so their observed shape differs
from the library's by an amount that grows with depth. The skin and chlorophyll spectra are the
phantom's own models (:data:`TISSUE_BANDS`), not the library's ``autofluorescence``.

Abundance is dimensionless: 1 means ``photons_per_mw_s`` photoelectrons per detector pixel per mW of
laser per second, at the peak of the source's emitted spectrum, before the tissue and the filter.
The brightness defaults make the demo scan (0.1 s, 40 mW, 3 x 4 binned pixels) record
autofluorescence of a few thousand counts and marker peaks near the top of the 16-bit range, so
that a few pixels at the centre of the ICG tube saturate.

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

# Components of the ground truth: the autofluorescence sources merged into one, and the markers.
COMPONENTS: tuple[str, ...] = ("autofluorescence", "icg_lnp", "af750")
MARKERS: tuple[str, ...] = ("icg_lnp", "af750")
# Sources of light in the phantom; the first two make up the truth's "autofluorescence".
AUTOFLUORESCENCE_SOURCES: tuple[str, ...] = ("skin", "chlorophyll")

LONG_PASS_EDGE_NM = 700.0
LONG_PASS_WIDTH_NM = 1.5

# Emission models of the autofluorescence sources: (centre_nm, blue-side sigma_nm, red-side sigma_nm,
# relative height) per band, as in fluoscan.unmixing.library.
# NOTE: both are models, not measurements. Skin: a broad band decaying from the laser line towards
# 900 nm, broader on the red side than the library's "autofluorescence", which the unmixing starts
# from. Chlorophyll: a band at 675 nm with a vibronic band near 720 nm, after the 674 nm peak that
# pheophorbide a and pheophytin a (chlorophyll products from the food) give in mouse skin (Weagle
# et al., J. Photochem. Photobiol. B 2 (1988) 313) and the strong gut autofluorescence of mice fed
# alfalfa chow (Inoue et al., Mol. Imaging 7 (2008) 21). The long-pass filter keeps only its red side.
TISSUE_BANDS: dict[str, tuple[tuple[float, float, float, float], ...]] = {
    "skin": ((712.0, 45.0, 115.0, 1.0),),
    "chlorophyll": ((675.0, 10.0, 16.0, 1.0), (722.0, 14.0, 30.0, 0.3)),
}

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
    # Abundance of the skin autofluorescence, and of the chlorophyll at the centre of the gut.
    autofluorescence: float = 0.0075
    chlorophyll: float = 0.06
    gut_x_mm: float = 2.0
    gut_y_mm: float = 68.0
    gut_sigma_mm: float = 8.0
    tubes: tuple[Tube, ...] = field(
        default_factory=lambda: (
            Tube("icg_lnp", x_mm=-6.0, y_mm=38.0, abundance=0.34),
            Tube("af750", x_mm=6.0, y_mm=58.0, abundance=0.25),
        )
    )
    # Blur sigma of a tube at the skin surface, and its growth per mm of depth.
    blur_at_surface_mm: float = 0.15
    blur_per_depth: float = 0.5


def long_pass(wavelengths_nm: np.ndarray) -> np.ndarray:
    """Transmission of the emission filter: a logistic edge, 50 % at 700 nm, 1e-3 at the 690 nm laser line."""
    return 1.0 / (1.0 + np.exp(-(np.asarray(wavelengths_nm, dtype=np.float64) - LONG_PASS_EDGE_NM) / LONG_PASS_WIDTH_NM))


def effective_attenuation_per_mm(wavelengths_nm: np.ndarray, mu_eff_700nm_per_mm: float, mu_eff_900nm_per_mm: float) -> np.ndarray:
    """Effective attenuation coefficient mu_eff of the tissue, per mm, linear between its values at 700 and 900 nm.

    NOTE: a model. Diffusion theory gives mu_eff = sqrt(3 mu_a (mu_a + mu_s')). With near-infrared
    values typical of skin and muscle, mu_a of 0.02 to 0.05 per mm and mu_s' of 1 to 2 per mm
    falling with wavelength (mu_s' = a (λ / 500 nm)^-b, Jacques, Phys. Med. Biol. 58 (2013) R37),
    mu_eff is 0.2 to 0.5 per mm and falls across the window. The defaults, 0.45 per mm at 700 nm
    and 0.25 at 900 nm, sit in that range. The line ignores the deoxyhaemoglobin band near 760 nm
    and the water band above 900 nm. Values beyond 700-900 nm are extrapolated, and never below 0.
    """
    wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64)
    slope = (mu_eff_900nm_per_mm - mu_eff_700nm_per_mm) / 200.0
    return np.clip(mu_eff_700nm_per_mm + slope * (wavelengths_nm - 700.0), 0.0, None)


def tissue_transmission(wavelengths_nm: np.ndarray, depth_mm: float, mu_eff_700nm_per_mm: float, mu_eff_900nm_per_mm: float) -> np.ndarray:
    """Fraction exp(-mu_eff(λ) depth) of the light emitted ``depth_mm`` under the skin that leaves it."""
    return np.exp(-effective_attenuation_per_mm(wavelengths_nm, mu_eff_700nm_per_mm, mu_eff_900nm_per_mm) * depth_mm)


def tissue_spectrum(name: str, wavelengths_nm: np.ndarray) -> np.ndarray:
    """Evaluate the emission model of an autofluorescence source (:data:`TISSUE_BANDS`), scaled to a peak of 1 on this grid."""
    wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64)
    spectrum = np.zeros_like(wavelengths_nm)
    for centre, sigma_blue, sigma_red, height in TISSUE_BANDS[name]:
        sigma = np.where(wavelengths_nm < centre, sigma_blue, sigma_red)
        spectrum += height * np.exp(-0.5 * ((wavelengths_nm - centre) / sigma) ** 2)
    return spectrum / spectrum.max()


def _box_blurred(u_mm: np.ndarray, centre_mm: float, width_mm: float, sigma_mm: float) -> np.ndarray:
    """Evaluate a top-hat of ``width_mm`` convolved with a Gaussian of ``sigma_mm`` at ``u_mm``."""
    scale = np.sqrt(2.0) * sigma_mm
    return 0.5 * (erf((u_mm - centre_mm + width_mm / 2) / scale) - erf((u_mm - centre_mm - width_mm / 2) / scale))


def merge_autofluorescence(abundance: np.ndarray, spectra: np.ndarray, n_merged: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge the first ``n_merged`` sources of a truth into the one component that best explains their light.

    The merged component is the best rank-one least-squares approximation of the merged sources'
    noiseless signal over the field. Its spectrum is the leading right singular vector of that
    signal (pixels x wavelengths), scaled to a peak of 1; it is non-negative because the signal
    is. Each pixel's weight is the least-squares fit of that spectrum to the pixel's signal, so
    that ``weight * spectrum`` is as close to the sources' light as one spectrum allows. Where the
    sources mix in other proportions than on average, the pixel keeps a residual: its local
    spectrum differs from the merged one.

    Parameters
    ----------
    abundance : ndarray of shape (..., n_sources)
        Weights, in counts at the peak of each spectrum.
    spectra : ndarray of shape (n_sources, n_wavelengths)
        Spectra scaled to a peak of 1.
    n_merged : int
        Number of leading sources to merge.

    Returns
    -------
    abundance : ndarray of shape (..., n_sources - n_merged + 1)
    spectra : ndarray of shape (n_sources - n_merged + 1, n_wavelengths)
    """
    # The signal is weights @ sources (pixels x wavelengths). Its Gram matrix and its projections are
    # formed from the small factors, so memory does not grow with the number of lines.
    weights = abundance[..., :n_merged].reshape(-1, n_merged)
    sources = spectra[:n_merged]
    gram = sources.T @ (weights.T @ weights) @ sources
    # The leading eigenvector of the Gram matrix is the leading right singular vector.
    eigenvalues, eigenvectors = np.linalg.eigh(gram)
    if eigenvalues[-1] > 0:
        merged_spectrum = np.abs(eigenvectors[:, -1])
        merged_spectrum /= merged_spectrum.max()
    else:
        # No autofluorescence at all: any spectrum fits a zero map, so keep the first source's.
        merged_spectrum = spectra[0]
    merged_weight = weights @ (sources @ merged_spectrum) / (merged_spectrum @ merged_spectrum)
    merged_abundance = np.concatenate([merged_weight.reshape(*abundance.shape[:-1], 1), abundance[..., n_merged:]], axis=-1)
    return merged_abundance, np.concatenate([merged_spectrum[None, :], spectra[n_merged:]])


class MousePhantom:
    """The simulated animal: abundance maps, emission spectra, photoelectron rates and noise seeds.

    Parameters
    ----------
    config : PhantomConfig
        Markers present, depths, tissue optics, brightness and the detector response.
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
        markers = tuple(name for name in MARKERS if name in config.markers)
        self.components: tuple[str, ...] = ("autofluorescence", *markers)
        self.sources: tuple[str, ...] = (*AUTOFLUORESCENCE_SOURCES, *markers)
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

    def source_depth_mm(self, source: str) -> float:
        """Return the depth under the skin from which a source's light leaves the animal."""
        if source == "skin":
            return 0.0
        if source == "chlorophyll":
            return self.config.gut_depth_mm
        return self.config.tube_depth_mm

    def abundance(self, x_mm: np.ndarray, y_mm: float) -> np.ndarray:
        """Return the abundance of each source along x at one y, shape (len(x_mm), n_sources)."""
        layout, config = self.layout, self.config
        x_mm = np.asarray(x_mm, dtype=np.float64)
        result = np.zeros((x_mm.size, len(self.sources)))
        body = self.body_mask(x_mm, y_mm)

        texture = 0.8 + 0.2 * np.sin(2 * np.pi * y_mm / 23.0 + 0.7) * np.cos(2 * np.pi * x_mm / 17.0)
        result[:, 0] = config.autofluorescence_brightness * layout.autofluorescence * body * texture
        gut = np.exp(-((x_mm - layout.gut_x_mm) ** 2 + (y_mm - layout.gut_y_mm) ** 2) / (2 * layout.gut_sigma_mm**2))
        result[:, 1] = config.autofluorescence_brightness * config.chlorophyll_brightness * layout.chlorophyll * body * gut

        sigma_mm = layout.blur_at_surface_mm + layout.blur_per_depth * config.tube_depth_mm
        for tube in layout.tubes:
            if tube.marker not in self.sources:
                continue
            across = _box_blurred(x_mm, tube.x_mm, tube.width_mm, sigma_mm)
            along = _box_blurred(np.asarray(y_mm), tube.y_mm, tube.length_mm, sigma_mm)
            result[:, self.sources.index(tube.marker)] += config.marker_brightness * tube.abundance * across * along
        return result

    def emission_spectra(self, wavelengths_nm: np.ndarray) -> np.ndarray:
        """Return the light of each source that reaches the detector, per unit abundance, shape (n_sources, n_wavelengths).

        Each emission model is scaled to a peak of 1 on a fixed 600-1000 nm grid, so that its height
        does not depend on the detector's range. It is then attenuated by the tissue above the source
        and by the long-pass filter.
        """
        wavelengths_nm = np.asarray(wavelengths_nm, dtype=np.float64)
        key = wavelengths_nm.tobytes()
        if self._spectra_cache is not None and self._spectra_cache[0] == key:
            return self._spectra_cache[1]
        grid = np.concatenate([wavelengths_nm, _REFERENCE_GRID_NM])
        rows = []
        for source in self.sources:
            emitted = tissue_spectrum(source, grid) if source in TISSUE_BANDS else library_spectrum(source, grid)
            transmission = tissue_transmission(
                wavelengths_nm, self.source_depth_mm(source), self.config.mu_eff_700nm_per_mm, self.config.mu_eff_900nm_per_mm
            )
            rows.append(emitted[: wavelengths_nm.size] * transmission)
        spectra = np.stack(rows) * long_pass(wavelengths_nm)[None, :]
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

    def source_truth(
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
        """Return the abundance and spectra of every light source (:attr:`sources`), which reproduce the cube exactly.

        ``raw - dark`` of line y, point x and wavelength bin b is, apart from noise and saturation,
        ``sum_s abundance[y, x, s] * spectra[s, b]``. Each spectrum is the source's light after the
        tissue and the filter, summed over the detector columns of each bin and scaled to a peak of
        1; abundance is in detector counts at that peak. Like the camera, each point sums the
        phantom over its track's rows. The parameters and shapes are those of :meth:`ground_truth`,
        with n_sources in place of n_components.
        """
        start, stop, column_bin = columns
        emission = self.emission_spectra(detector_wavelengths_nm)[:, start:stop]
        binned = emission.reshape(len(self.sources), -1, column_bin).sum(axis=2)
        peak = binned.max(axis=1)
        peak[peak == 0] = 1.0
        spectra = binned / peak[:, None]

        counts_per_abundance = self.photoelectrons_per_abundance(exposure_s, power_mw) / self.config.gain_e_per_count
        positions_mm = np.atleast_1d(np.asarray(positions_mm, dtype=np.float64))
        abundance = np.zeros((positions_mm.size, len(track_rows), len(self.sources)))
        for line, y_mm in enumerate(positions_mm):
            rows = self.abundance(x_rows_mm, self.line_position_mm(self.line_index(y_mm)))
            for point, (first, last) in enumerate(track_rows):
                abundance[line, point] = rows[first:last].sum(axis=0)
        abundance *= counts_per_abundance * peak[None, None, :]
        return abundance, spectra, list(self.sources)

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
        """Return the abundance and spectra of the components (:attr:`components`) behind the dark-subtracted cube.

        The markers' maps and spectra are those of :meth:`source_truth`: each spectrum is what the
        camera records of the marker through the tissue, not its library spectrum. "autofluorescence"
        merges the skin and the gut's chlorophyll (:func:`merge_autofluorescence`): its spectrum is
        their average over the scanned field, and its map keeps each pixel's autofluorescence counts
        summed over wavelength. So ``sum_c abundance[y, x, c] * spectra[c, b]`` reproduces
        ``raw - dark`` exactly at the markers' wavelengths and totals, and is off only by the
        difference between the local and the average mix of skin and chlorophyll.

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
        abundance, spectra, _ = self.source_truth(
            positions_mm,
            x_rows_mm=x_rows_mm,
            track_rows=track_rows,
            detector_wavelengths_nm=detector_wavelengths_nm,
            columns=columns,
            exposure_s=exposure_s,
            power_mw=power_mw,
        )
        abundance, spectra = merge_autofluorescence(abundance, spectra, len(AUTOFLUORESCENCE_SOURCES))
        return abundance, spectra, list(self.components)
