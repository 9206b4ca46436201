"""The mouse phantom and the simulated spectrometer that images it through the real Andor driver."""

from __future__ import annotations

import numpy as np
import pytest

from fluoscan.acquisition.config import FluoscanConfig, PhantomConfig, parse_config
from fluoscan.acquisition.devices import GroundTruthSource
from fluoscan.drivers import DeviceTimeout, Spectrometer
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.simulators.phantom import MousePhantom, long_pass
from fluoscan.simulators.spectrometer import (
    SimulatedAndorSpectrometer,
    open_simulated_spectrometer,
    slit_positions_mm,
    stub_device_context,
)

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


@pytest.mark.parametrize("index", [ICG_LINE, AF750_LINE, 100])
def test_truth_reproduces_dark_subtracted_frame(rig, index):
    dark = rig.dark(8).astype(float)
    frame = rig.line(index).astype(float)
    position = rig.config.scan.positions_mm()[index]
    abundance, spectra, _ = rig.spectrometer.ground_truth(np.array([position]))
    model = abundance[0] @ spectra

    noise = rig.config.simulation.phantom
    unsaturated = frame < noise.saturation_counts
    sigma = np.sqrt(model / noise.gain_e_per_count + 2 * (noise.read_noise_e / noise.gain_e_per_count) ** 2 + 0.3)
    z = ((frame - dark.mean(axis=0) - model) / sigma)[unsaturated]
    assert abs(z.mean()) < 0.05
    assert z.std() == pytest.approx(1.0, abs=0.1)


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
        profile = make_phantom(tube_depth_mm=depth_mm).abundance(x_mm, 38.0)[:, 1]
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
