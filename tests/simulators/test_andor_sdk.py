"""pylablib's real Andor classes running on the stand-in SDK2 and Shamrock libraries."""

from __future__ import annotations

import numpy as np
import pytest
from pylablib.devices import Andor
from pylablib.devices.Andor import AndorSDK2, Shamrock
from pylablib.devices.Andor.atmcd32d_lib import DRV_STATUS, AndorSDK2LibError
from pylablib.devices.Andor.ShamrockCIF_lib import SHAMROCK_ERR, ShamrockLibError

from fluoscan.simulators.andor_sdk import (
    AcquisitionMode,
    NoiseModel,
    SceneFrame,
    ShutterMode,
    SimulatedSDK2,
    SimulatedShamrock,
    SpectrographModel,
    install_standin,
)
from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan

HEIGHT, WIDTH = 255, 1024


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-4)


def uniform_scene(photoelectrons: float):
    def scene(exposure):
        return SceneFrame(np.full(exposure.detector_shape, photoelectrons), np.random.default_rng(0))

    return scene


def top_rows_scene(n_rows: int, photoelectrons: float = 5000.0):
    def scene(exposure):
        light = np.zeros(exposure.detector_shape)
        light[:n_rows] = photoelectrons
        return SceneFrame(light, np.random.default_rng(0))

    return scene


@pytest.fixture
def standin():
    """Yield (sdk, shamrock) installed in pylablib; noise-free detector with zero offset."""
    shamrock = SimulatedShamrock()
    sdk = SimulatedSDK2(
        noise=NoiseModel(offset_counts=0.0, read_noise_e=0.0, dark_current_e_s=0.0, gain_e_per_count=1.0),
        spectrograph=shamrock,
    )
    with install_standin(sdk, shamrock):
        yield sdk, shamrock


@pytest.fixture
def camera(standin):
    cam = Andor.AndorSDK2Camera()
    yield cam
    cam.close()


# ------------------------------------------------------------------ installation


def test_install_restores_pylablib_libraries():
    originals = (AndorSDK2.lib, AndorSDK2.libctl, Shamrock.lib, Shamrock.libctl)
    with install_standin(SimulatedSDK2(), SimulatedShamrock()):
        assert AndorSDK2.lib is not originals[0]
        assert Shamrock.lib is not originals[2]
    assert (AndorSDK2.lib, AndorSDK2.libctl, Shamrock.lib, Shamrock.libctl) == originals


def test_install_twice_is_rejected():
    with install_standin(SimulatedSDK2()):
        with pytest.raises(RuntimeError, match="already installed"):
            with install_standin(SimulatedSDK2()):
                pass


# ------------------------------------------------------------------ camera


def test_camera_opens_with_identity(camera):
    assert camera.get_device_info() == ("USB", "DU420A-BEX2-DD", 14520)
    assert camera.get_detector_size() == (WIDTH, HEIGHT)
    assert camera.get_pixel_size() == pytest.approx((26e-6, 26e-6))


def test_camera_opens_with_shutter_closed(standin, camera):
    sdk, _ = standin
    assert sdk.shutter_mode is ShutterMode.CLOSED


def test_camera_ignores_temperature_argument(standin):
    """pylablib 1.4.5 ignores a numeric temperature at construction; the stand-in shows it."""
    sdk, _ = standin
    cam = Andor.AndorSDK2Camera(temperature=-40)
    try:
        assert cam.get_temperature_setpoint() != -40
        cam.set_temperature(-40)
        assert sdk._cooler.setpoint_c == -40
    finally:
        cam.close()


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("single", AcquisitionMode.ACCUMULATE), ("accum", AcquisitionMode.KINETIC), ("cont", AcquisitionMode.CONTINUOUS)],
)
def test_set_acquisition_mode_off_by_one(standin, camera, mode, expected):
    """With setup_params=True pylablib 1.4.5 sends the next mode's set-up; "cont" happens to be right."""
    sdk, _ = standin
    camera.set_acquisition_mode(mode)
    assert sdk.acquisition_mode is expected


def test_set_kinetic_mode_fails_without_fast_kinetics(camera):
    """The same bug calls the fast-kinetic set-up, whose parameters an iDus never stored."""
    with pytest.raises(KeyError, match="fast_kinetic"):
        camera.set_acquisition_mode("kinetic")


def test_set_acquisition_mode_without_setup_params(standin, camera):
    sdk, _ = standin
    camera.set_acquisition_mode("single", setup_params=False)
    assert sdk.acquisition_mode is AcquisitionMode.SINGLE


@pytest.mark.parametrize(
    ("setup", "shape"),
    [
        (lambda cam: cam.set_read_mode("fvb"), (1, WIDTH)),
        (lambda cam: cam.setup_single_track_mode(center=100, width=5), (1, WIDTH)),
        (lambda cam: cam.setup_multi_track_mode(number=8, height=4), (8, WIDTH)),
        (lambda cam: cam.setup_random_track_mode([(0, 5), (10, 20), (30, 31)]), (3, WIDTH)),
        (lambda cam: cam.setup_image_mode(), (HEIGHT, WIDTH)),
        (lambda cam: cam.setup_image_mode(0, 1024, 31, 223, hbin=4, vbin=3), (64, 256)),
        (lambda cam: cam.setup_image_mode(100, 300, 0, 250, hbin=2, vbin=25), (10, 100)),
    ],
    ids=["fvb", "single_track", "multi_track", "random_track", "full_image", "image_binned", "image_cropped"],
)
def test_read_mode_frame_shape(standin, camera, setup, shape):
    standin[0].scene = uniform_scene(10.0)
    setup(camera)
    frame = camera.snap(timeout=2.0)
    assert frame.shape == shape
    assert frame.dtype == np.uint16


@pytest.mark.parametrize(("hbin", "vbin"), [(1, 1), (4, 3), (2, 25)])
def test_binning_sums_charge(standin, camera, hbin, vbin):
    standin[0].scene = uniform_scene(10.0)
    camera.setup_shutter("open")
    camera.setup_image_mode(0, 200, 0, 150, hbin=hbin, vbin=vbin)
    frame = camera.snap(timeout=2.0)
    assert frame.mean() == pytest.approx(10.0 * hbin * vbin, rel=0.05)


@pytest.mark.parametrize(("indexing", "bright_row"), [("rct", 0), ("rcb", -1)])
def test_row_order_follows_image_indexing(standin, camera, indexing, bright_row):
    standin[0].scene = top_rows_scene(n_rows=3)
    camera.setup_shutter("open")
    camera.set_image_indexing(indexing)
    camera.setup_image_mode(0, WIDTH, 0, HEIGHT, vbin=1)
    frame = camera.snap(timeout=2.0)
    assert frame[bright_row].mean() > 1000
    assert frame[HEIGHT // 2].mean() < 100


@pytest.mark.parametrize(("shutter", "lit"), [("closed", False), ("open", True), ("auto", True)])
def test_shutter_state_gates_light(standin, camera, shutter, lit):
    standin[0].scene = uniform_scene(1000.0)
    camera.setup_shutter(shutter)
    frame = camera.snap(timeout=2.0)
    assert bool(frame.mean() > 500) == lit


def test_saturation_at_16_bits(standin, camera):
    standin[0].scene = uniform_scene(1e6)
    camera.setup_shutter("open")
    frame = camera.snap(timeout=2.0)
    assert int(frame.min()) == 65535


def test_noise_model_statistics():
    noise = NoiseModel(offset_counts=500, read_noise_e=6, dark_current_e_s=0, gain_e_per_count=2)
    counts = noise.digitise(np.full(200_000, 400.0), 1, np.random.default_rng(3)).astype(float)
    assert counts.mean() == pytest.approx(500 + 400 / 2, abs=0.5)
    assert counts.std() == pytest.approx(np.sqrt(400 + 36) / 2, rel=0.03)


# ------------------------------------------------------------------ timing, cooler, buffer


@pytest.fixture
def timed_standin():
    clock = FakeClock()
    shamrock = SimulatedShamrock(sleep=clock.sleep)
    sdk = SimulatedSDK2(time_scale=1.0, readout_s=0.02, spectrograph=shamrock, clock=clock, sleep=clock.sleep)
    with install_standin(sdk, shamrock):
        cam = Andor.AndorSDK2Camera()
        yield sdk, cam, clock
        cam.close()


def test_frame_arrives_after_exposure_and_readout(timed_standin):
    sdk, cam, clock = timed_standin
    cam.set_exposure(0.5)
    cam.set_acquisition_mode("single", setup_params=False)
    cam.start_acquisition()
    started = clock.now
    assert sdk.GetStatus() == DRV_STATUS.DRV_ACQUIRING
    cam.wait_for_frame(timeout=5.0)
    assert clock.now - started == pytest.approx(0.52, abs=0.01)
    assert sdk.GetStatus() == DRV_STATUS.DRV_IDLE


def test_cooler_reaches_then_stabilises(timed_standin):
    sdk, cam, clock = timed_standin
    cam.set_temperature(-60)
    statuses = []
    for _ in range(200):
        statuses.append(cam.get_temperature_status())
        clock.sleep(1.0)
    assert statuses[0] == "not_reached"
    assert "not_stabilized" in statuses
    assert statuses[-1] == "stabilized"
    assert cam.get_temperature() == pytest.approx(-60, abs=1.0)


def test_cooler_cannot_reach_beyond_its_limit(timed_standin):
    sdk, cam, clock = timed_standin
    cam.set_temperature(-95)
    clock.sleep(3600.0)
    assert cam.get_temperature_status() == "not_reached"
    assert cam.get_temperature() == pytest.approx(sdk.detector.coolest_reachable_c, abs=0.5)


def test_cooler_off_reports_off(timed_standin):
    _, cam, _ = timed_standin
    cam.set_cooler(False)
    assert cam.get_temperature_status() == "off"


def test_continuous_mode_overwrites_buffer(timed_standin):
    sdk, cam, clock = timed_standin
    cam.set_exposure(0.01)
    cam.setup_image_mode(0, WIDTH, 0, HEIGHT, hbin=8, vbin=17)
    cam.setup_acquisition(mode="sequence")
    cam.start_acquisition()
    clock.sleep(0.03 * 40)
    for _ in range(3):
        cam.get_frames_status()
    status = cam.get_frames_status()
    cam.stop_acquisition()
    assert status.acquired > sdk.detector.buffer_frames
    assert status.skipped > 0


# ------------------------------------------------------------------ faults at the library level


@pytest.mark.parametrize(
    ("fault", "call", "code"),
    [
        (Fault(FaultKind.REJECT, "SetExposureTime", occurrence=2), lambda cam: cam.set_exposure(0.1), DRV_STATUS.DRV_P1INVALID),
        (Fault(FaultKind.REJECT, "StartAcquisition"), lambda cam: cam.start_acquisition(), DRV_STATUS.DRV_ACQUISITION_ERRORS),
        (Fault(FaultKind.DISCONNECT, "GetTemperatureF"), lambda cam: cam.get_temperature(), DRV_STATUS.DRV_USBERROR),
    ],
    ids=["reject", "reject_start", "disconnect"],
)
def test_library_faults_raise_sdk_errors(fault, call, code):
    sdk = SimulatedSDK2(faults=FaultPlan([fault]))
    with install_standin(sdk):
        cam = Andor.AndorSDK2Camera()
        with pytest.raises(AndorSDK2LibError) as caught:
            call(cam)
        assert caught.value.code == code
        sdk.reconnect()
        sdk.Initialize(b"")
        cam.close()


def test_disconnect_fails_every_later_call():
    sdk = SimulatedSDK2(faults=FaultPlan([Fault(FaultKind.DISCONNECT, "GetTemperatureF")]))
    with install_standin(sdk):
        cam = Andor.AndorSDK2Camera()
        with pytest.raises(AndorSDK2LibError):
            cam.get_temperature()
        with pytest.raises(AndorSDK2LibError) as caught:
            cam.get_detector_size()
        assert caught.value.code == DRV_STATUS.DRV_USBERROR
        with pytest.raises(AndorSDK2LibError):
            cam.close()
        assert not cam.is_opened()


def test_shamrock_fault_raises_shamrock_error():
    shamrock = SimulatedShamrock(faults=FaultPlan([Fault(FaultKind.REJECT, "ShamrockSetWavelength")]))
    with install_standin(SimulatedSDK2(spectrograph=shamrock), shamrock):
        spectrograph = Andor.ShamrockSpectrograph()
        with pytest.raises(ShamrockLibError) as caught:
            spectrograph.set_wavelength(800e-9)
        spectrograph.close()
    assert caught.value.code == SHAMROCK_ERR.SHAMROCK_P1INVALID


# ------------------------------------------------------------------ spectrograph


def test_calibration_spans_demo_window(standin, camera):
    spectrograph = Andor.ShamrockSpectrograph()
    try:
        spectrograph.set_wavelength(800e-9)
        spectrograph.setup_pixels_from_camera(camera)
        calibration_nm = spectrograph.get_calibration() * 1e9
    finally:
        spectrograph.close()
    assert calibration_nm.shape == (WIDTH,)
    assert np.all(np.diff(calibration_nm) > 0)
    assert calibration_nm[0] == pytest.approx(700, abs=5)
    assert calibration_nm[-1] == pytest.approx(900, abs=5)
    assert calibration_nm[WIDTH // 2] == pytest.approx(800, abs=0.5)


@pytest.mark.parametrize(("grating", "span_nm"), [(1, 197), (2, 410), (3, 90)])
def test_grating_sets_dispersion(grating, span_nm):
    wavelengths = SpectrographModel().pixel_wavelengths_nm(grating, 800.0 if grating != 3 else 700.0, WIDTH, 26.0)
    assert wavelengths[-1] - wavelengths[0] == pytest.approx(span_nm, rel=0.1)


def test_wavelength_outside_grating_range_is_rejected(standin):
    spectrograph = Andor.ShamrockSpectrograph()
    try:
        spectrograph.set_grating(3)
        with pytest.raises(ShamrockLibError):
            spectrograph.set_wavelength(1500e-9)
    finally:
        spectrograph.close()


def test_grating_info_and_count(standin):
    spectrograph = Andor.ShamrockSpectrograph()
    try:
        assert spectrograph.get_gratings_number() == 3
        assert spectrograph.get_grating_info(1).lines == 600
        assert spectrograph.get_device_info().serial_number == "KY-1931"
    finally:
        spectrograph.close()
