"""The mouse phantom and the simulated spectrometer that images it through the real Andor driver."""

from __future__ import annotations

import numpy as np
import pytest

from fluoscan.acquisition.config import FluoscanConfig, PhantomConfig, parse_config
from fluoscan.acquisition.devices import GroundTruthSource
from fluoscan.drivers import DeviceTimeout, Spectrometer
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.simulators.phantom import (
    MousePhantom,
    effective_attenuation_per_mm,
    long_pass,
    merge_autofluorescence,
    tissue_transmission,
)
from fluoscan.simulators.spectrometer import (
    SimulatedAndorSpectrometer,
    open_simulated_spectrometer,
    slit_positions_mm,
    stub_device_context,
)
from fluoscan.unmixing.library import library_spectrum
from fluoscan.unmixing.metrics import spectral_angle

# Lines through the middle of the ICG tube (y = 38 mm) and of the AF750 tube (y = 58 mm) in the demo raster.
ICG_LINE, AF750_LINE = 44, 71


def demo_config(**phantom: object) -> FluoscanConfig:
    """Return the demo scan's settings, with instant simulated timing."""
    return parse_config(
        {
            "scan": {"y_start_mm": 5.0, "step_mm": 0.75, "n_lines": 120, "exposure_s": 0.1},
            "laser": {"power_mw": 40.0},
            "spectrometer": {
                "n_points": 64,
                "point_pitch_mm": 0.5,
                "horizontal_binning": 4,
                "temperature_c": -60.0,
                "frame_timeout_s": 0.2,
            },
            "simulation": {"seed": 1, "time_scale": 0.0, "phantom": phantom},
        }
    )


class Rig:
    """A simulated spectrometer with a stub laser and stage, driven line by line."""

    def __init__(self, config: FluoscanConfig | None = None, **options: object) -> None:
        self.config = config or demo_config()
        self.context = stub_device_context(self.config, **options)
        try:
            self.spectrometer = open_simulated_spectrometer(self.context)
        except BaseException:
            self.context.stack.close()
            raise

    def dark(self, count: int = 4) -> np.ndarray:
        self.context.laser.set_emission(False)
        return np.stack([self.spectrometer.acquire() for _ in range(count)])

    def line(self, index: int) -> np.ndarray:
        self.context.laser.set_emission(True)
        self.context.stage.move_to(self.config.scan.positions_mm()[index])
        return self.spectrometer.acquire()

    def close(self) -> None:
        self.spectrometer.close()
        self.context.stack.close()


@pytest.fixture
def rig():
    rig = Rig()
    yield rig
    rig.close()


# ------------------------------------------------------------------ the simulated spectrometer


def test_simulated_spectrometer_is_real_driver(rig):
    assert isinstance(rig.spectrometer, SimulatedAndorSpectrometer)
    assert isinstance(rig.spectrometer, Spectrometer)
    assert isinstance(rig.spectrometer, GroundTruthSource)


def test_closing_stack_restores_pylablib():
    from pylablib.devices.Andor import AndorSDK2

    original = AndorSDK2.lib
    rig = Rig()
    assert AndorSDK2.lib is not original
    rig.close()
    assert AndorSDK2.lib is original


def test_laser_off_gives_dark_frame(rig):
    frame = rig.dark(1)[0].astype(float)
    noise = rig.config.simulation.phantom
    assert frame.mean() == pytest.approx(noise.offset_counts, abs=2.0)


def test_laser_on_shows_markers_above_noise(rig):
    dark = rig.dark().mean(axis=0)
    signal = rig.line(AF750_LINE) - dark
    assert signal.max() > 100 * np.sqrt(signal.max())


def test_faults_option_reaches_stand_in():
    rig = Rig(spectrometer_faults=[Fault(FaultKind.STALL, "frame")])
    try:
        with pytest.raises(DeviceTimeout):
            rig.line(0)
    finally:
        rig.close()


# ------------------------------------------------------------------ determinism


def record(config: FluoscanConfig | None, steps: list[tuple[str, int]]) -> list[np.ndarray]:
    """Run ("dark", count) and ("line", index) steps on a fresh rig, one rig at a time, and return the frames."""
    rig = Rig(config)
    try:
        frames = []
        for kind, value in steps:
            frames.extend(rig.dark(value) if kind == "dark" else [rig.line(value)])
        return frames
    finally:
        rig.close()


def test_line_frame_ignores_history():
    reference = record(None, [("dark", 4), ("line", 10)])[-1]
    again = record(None, [("line", 50), ("line", 3), ("line", 99), ("line", 10)])[-1]
    assert np.array_equal(reference, again)


def test_same_line_twice_is_identical(rig):
    assert np.array_equal(rig.line(7), rig.line(7))


def test_different_lines_differ(rig):
    assert not np.array_equal(rig.line(7), rig.line(8))


def test_seed_changes_noise():
    config = demo_config()
    other = config.model_copy(update={"simulation": config.simulation.model_copy(update={"seed": 2})})
    first = record(config, [("line", 30)])[0]
    second = record(other, [("line", 30)])[0]
    assert not np.array_equal(first, second)


def test_resumed_scan_is_bit_identical():
    full = record(None, [("dark", 4)] + [("line", index) for index in range(6)])
    resumed = record(None, [("dark", 4)] + [("line", index) for index in range(3, 6)])
    for full_frame, resumed_frame in zip(full[:4] + full[7:], resumed, strict=True):
        assert np.array_equal(full_frame, resumed_frame)


def test_dark_frames_follow_own_sequence(rig):
    dark = rig.dark(3)
    assert not np.array_equal(dark[0], dark[1])
    assert not np.array_equal(dark[1], dark[2])


def test_stage_jitter_keeps_line_frame(rig):
    position = rig.config.scan.positions_mm()[20]
    rig.context.laser.set_emission(True)
    rig.context.stage.move_to(position + 0.2)
    jittered = rig.spectrometer.acquire()
    assert np.array_equal(jittered, rig.line(20))


# ------------------------------------------------------------------ ground truth


def test_truth_shapes_and_names(rig):
    abundance, spectra, names = rig.spectrometer.ground_truth(np.array(rig.config.scan.positions_mm()))
    assert names == ["autofluorescence", "icg_lnp", "af750"]
    assert abundance.shape == (120, 64, 3)
    assert spectra.shape == (3, 256)
    assert np.allclose(spectra.max(axis=1), 1.0)


def source_truth(rig: Rig, positions_mm: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Return the phantom's per-source truth for the rig's detector, as its ground_truth would build it."""
    spectrometer = rig.spectrometer
    geometry = spectrometer.readout_geometry
    return spectrometer.phantom.source_truth(
        positions_mm,
        x_rows_mm=spectrometer.scene.x_rows_mm(geometry.detector_height_px),
        track_rows=geometry.track_rows_px(),
        detector_wavelengths_nm=spectrometer.sdk.spectrograph.physical_wavelengths_nm(
            geometry.detector_width_px, spectrometer.sdk.detector.pixel_size_um
        ),
        columns=geometry.columns(),
        exposure_s=spectrometer.exposure_s,
        power_mw=rig.config.laser.power_mw,
    )


@pytest.mark.parametrize("index", [ICG_LINE, AF750_LINE, 100])
def test_source_truth_reproduces_frame(rig, index):
    dark = rig.dark(8).astype(float)
    frame = rig.line(index).astype(float)
    position = rig.config.scan.positions_mm()[index]
    abundance, spectra, _ = source_truth(rig, np.array([position]))
    model = abundance[0] @ spectra

    noise = rig.config.simulation.phantom
    unsaturated = frame < noise.saturation_counts
    sigma = np.sqrt(model / noise.gain_e_per_count + 2 * (noise.read_noise_e / noise.gain_e_per_count) ** 2 + 0.3)
    z = ((frame - dark.mean(axis=0) - model) / sigma)[unsaturated]
    assert abs(z.mean()) < 0.05
    assert z.std() == pytest.approx(1.0, abs=0.1)


def test_truth_markers_match_sources(rig):
    positions = np.array(rig.config.scan.positions_mm())
    abundance, spectra, names = rig.spectrometer.ground_truth(positions)
    source_abundance, source_spectra, sources = source_truth(rig, positions)
    for name in ("icg_lnp", "af750"):
        assert np.array_equal(abundance[..., names.index(name)], source_abundance[..., sources.index(name)])
        assert np.array_equal(spectra[names.index(name)], source_spectra[sources.index(name)])


def test_truth_autofluorescence_is_least_squares(rig):
    """Each pixel's autofluorescence weight is the least-squares fit of the merged spectrum to its skin and gut light."""
    positions = np.array(rig.config.scan.positions_mm())
    abundance, spectra, _ = rig.spectrometer.ground_truth(positions)
    source_abundance, source_spectra, _ = source_truth(rig, positions)
    light = source_abundance[..., :2] @ source_spectra[:2]
    leftover = light - abundance[..., :1] * spectra[0]
    scale = np.linalg.norm(light, axis=-1) * np.linalg.norm(spectra[0])
    assert np.max(np.abs(leftover @ spectra[0]) / np.maximum(scale, 1e-9)) < 1e-9


@pytest.mark.parametrize(("chlorophyll", "max_leftover"), [(0.0, 1e-9), (1.0, 0.3)])
def test_truth_autofluorescence_leftover(chlorophyll, max_leftover):
    """With no gut chlorophyll one spectrum explains the autofluorescence; with it, some light is left over."""
    rig = Rig(demo_config(chlorophyll_brightness=chlorophyll))
    try:
        positions = np.array(rig.config.scan.positions_mm())
        abundance, spectra, _ = rig.spectrometer.ground_truth(positions)
        source_abundance, source_spectra, _ = source_truth(rig, positions)
    finally:
        rig.close()
    light = source_abundance[..., :2] @ source_spectra[:2]
    leftover = np.linalg.norm(light - abundance[..., :1] * spectra[0], axis=-1)
    relative = leftover / np.maximum(np.linalg.norm(light, axis=-1), 1e-9)
    assert relative.max() <= max_leftover
    if chlorophyll > 0:
        assert relative.max() > 0.05


def test_merge_of_one_source_keeps_it():
    spectra = np.array([[0.2, 1.0, 0.5], [1.0, 0.1, 0.0]])
    abundance = np.array([[[3.0, 7.0], [0.0, 2.0]]])
    merged_abundance, merged_spectra = merge_autofluorescence(abundance, spectra, 1)
    assert np.allclose(merged_spectra, spectra)
    assert np.allclose(merged_abundance, abundance)


def test_merge_without_light_keeps_first_spectrum():
    spectra = np.array([[0.2, 1.0, 0.5], [1.0, 0.1, 0.0], [0.0, 0.3, 1.0]])
    abundance = np.zeros((2, 2, 3))
    merged_abundance, merged_spectra = merge_autofluorescence(abundance, spectra, 2)
    assert np.array_equal(merged_spectra[0], spectra[0])
    assert np.all(merged_abundance == 0)


def test_truth_follows_component_selection():
    config = demo_config(markers=["af750"])
    rig = Rig(config)
    try:
        abundance, spectra, names = rig.spectrometer.ground_truth(np.array([50.0]))
    finally:
        rig.close()
    assert names == ["autofluorescence", "af750"]
    assert abundance.shape == (1, 64, 2)
    assert spectra.shape == (2, 256)


def test_saturation_is_possible_but_rare(rig):
    frame = rig.line(ICG_LINE)
    saturated = np.count_nonzero(frame == 65535)
    assert saturated > 0
    assert saturated < 0.002 * frame.size


def test_saturation_absent_away_from_tubes(rig):
    assert rig.line(100).max() < 65535


# ------------------------------------------------------------------ the phantom itself


def make_phantom(**changes: object) -> MousePhantom:
    return MousePhantom(PhantomConfig(**changes), seed=0, y_start_mm=5.0, step_mm=0.75)


@pytest.mark.parametrize(("shallow_mm", "deep_mm"), [(0.0, 1.0), (1.0, 3.0), (2.0, 6.0)])
def test_tube_blur_grows_with_depth(shallow_mm, deep_mm):
    x_mm = np.linspace(-15, 15, 3001)

    def width_mm(depth_mm: float) -> float:
        phantom = make_phantom(tube_depth_mm=depth_mm)
        profile = phantom.abundance(x_mm, 38.0)[:, phantom.sources.index("icg_lnp")]
        above = x_mm[profile >= profile.max() / 2]
        return above[-1] - above[0]

    assert width_mm(deep_mm) > width_mm(shallow_mm)


def test_body_outline_is_mouse_sized():
    phantom = make_phantom()
    x_mm = np.linspace(-20, 20, 401)
    across = x_mm[phantom.body_mask(x_mm, 50.0) > 0.5]
    along = [y for y in np.arange(0.0, 100.0, 0.25) if phantom.body_mask(np.array([0.0]), y)[0] > 0.5]
    assert across[-1] - across[0] == pytest.approx(30.0, abs=1.0)
    assert along[-1] - along[0] == pytest.approx(90.0, abs=1.5)


def test_body_narrows_towards_nose():
    phantom = make_phantom()
    x_mm = np.linspace(-20, 20, 401)
    nose = np.count_nonzero(phantom.body_mask(x_mm, 20.0) > 0.5)
    tail = np.count_nonzero(phantom.body_mask(x_mm, 80.0) > 0.5)
    assert nose < tail


def test_emission_scales_with_power():
    phantom = make_phantom()
    x_mm = slit_positions_mm(255, 3, 0.5)
    wavelengths = np.linspace(700, 900, 64)
    low = phantom.expected_photoelectrons(44, x_mm, wavelengths, 0.1, 20.0)
    high = phantom.expected_photoelectrons(44, x_mm, wavelengths, 0.1, 40.0)
    assert np.allclose(high, 2 * low)


def test_long_pass_blocks_laser_line():
    assert long_pass(np.array([690.0]))[0] < 2e-3
    assert long_pass(np.array([720.0]))[0] > 0.99


def test_spectra_height_independent_of_range():
    phantom = make_phantom()
    wide = phantom.emission_spectra(np.array([777.0, 850.0, 700.0]))
    narrow = phantom.emission_spectra(np.array([850.0]))
    assert np.allclose(wide[:, 1], narrow[:, 0])


def test_unknown_marker_is_rejected():
    with pytest.raises(ValueError, match="unknown phantom markers"):
        make_phantom(markers=("fitc",))


def test_line_index_rounds_to_nearest():
    phantom = make_phantom()
    assert phantom.line_index(5.0 + 0.75 * 12 + 0.3) == 12
    assert phantom.line_index(5.0 + 0.75 * 12 - 0.3) == 12


# ------------------------------------------------------------------ tissue optics


def test_attenuation_falls_across_window():
    mu_per_mm = effective_attenuation_per_mm(np.array([700.0, 800.0, 900.0]), 0.45, 0.25)
    assert np.allclose(mu_per_mm, [0.45, 0.35, 0.25])


def test_attenuation_never_negative():
    assert effective_attenuation_per_mm(np.array([1500.0]), 0.45, 0.25)[0] == 0.0


@pytest.mark.parametrize(("depth_mm", "expected"), [(0.0, 1.0), (2.0, np.exp(-0.9))])
def test_transmission_at_700nm(depth_mm, expected):
    assert tissue_transmission(np.array([700.0]), depth_mm, 0.45, 0.25)[0] == pytest.approx(expected)


def marker_angle(marker: str, **changes: object) -> float:
    """Return the angle in rad between a marker's light at the detector and its library spectrum times the filter."""
    wavelengths = np.linspace(700.0, 900.0, 201)
    phantom = make_phantom(**changes)
    seen = phantom.emission_spectra(wavelengths)[phantom.sources.index(marker)]
    return spectral_angle(seen, library_spectrum(marker, wavelengths) * long_pass(wavelengths))


@pytest.mark.parametrize("marker", ["icg_lnp", "af750"])
def test_no_tissue_keeps_library_shape(marker):
    assert marker_angle(marker, mu_eff_700nm_per_mm=0.0, mu_eff_900nm_per_mm=0.0) < 1e-12


@pytest.mark.parametrize("marker", ["icg_lnp", "af750"])
@pytest.mark.parametrize(("shallow_mm", "deep_mm"), [(0.5, 1.0), (1.0, 5.0)])
def test_depth_reshapes_marker(marker, shallow_mm, deep_mm):
    assert marker_angle(marker, tube_depth_mm=deep_mm) > marker_angle(marker, tube_depth_mm=shallow_mm) > 0.0


@pytest.mark.parametrize("marker", ["icg_lnp", "af750"])
def test_deep_marker_looks_redder(marker):
    wavelengths = np.linspace(700.0, 900.0, 201)
    peaks = []
    for depth_mm in (0.0, 5.0):
        phantom = make_phantom(tube_depth_mm=depth_mm)
        peaks.append(wavelengths[np.argmax(phantom.emission_spectra(wavelengths)[phantom.sources.index(marker)])])
    assert peaks[1] > peaks[0]


def test_truth_spectra_differ_from_library(rig):
    abundance, spectra, names = rig.spectrometer.ground_truth(np.array(rig.config.scan.positions_mm()))
    wavelengths = rig.spectrometer.wavelengths_nm()
    for index, name in enumerate(names):
        assert spectral_angle(spectra[index], library_spectrum(name, wavelengths)) > 0.01


def test_gut_is_bluer_than_skin():
    phantom = make_phantom()
    x_mm = np.array([phantom.layout.gut_x_mm])
    wavelengths = np.linspace(700.0, 900.0, 201)
    light = phantom.abundance(x_mm, phantom.layout.gut_y_mm) @ phantom.emission_spectra(wavelengths)
    skin_phantom = make_phantom(chlorophyll_brightness=0.0)
    skin_only = skin_phantom.abundance(x_mm, phantom.layout.gut_y_mm) @ phantom.emission_spectra(wavelengths)
    blue = wavelengths < 740.0
    assert light[0, blue].sum() / light[0].sum() > skin_only[0, blue].sum() / skin_only[0].sum()
