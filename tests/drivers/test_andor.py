"""The shipped Andor driver: pylablib's real classes running on the stand-in SDK."""

from __future__ import annotations

import sys
import time

import numpy as np
import pytest
from pylablib.devices.Andor import AndorSDK2, Shamrock
from pylablib.devices.interface.camera import TFramesStatus

from fluoscan.acquisition.config import SpectrometerConfig
from fluoscan.drivers import (
    DeviceDisconnected,
    DeviceError,
    DeviceProtocolError,
    DeviceTimeout,
    DeviceUnavailable,
    Spectrometer,
)
from fluoscan.drivers.andor import AndorSpectrometer, ReadoutGeometry, bin_columns, open_andor_spectrometer
from fluoscan.simulators.andor_sdk import (
    AcquisitionMode,
    NoiseModel,
    SceneFrame,
    ShutterMode,
    SimulatedSDK2,
    SimulatedShamrock,
    install_standin,
)
from fluoscan.simulators.faults import Fault, FaultKind, FaultPlan
from fluoscan.simulators.spectrometer import stub_device_context

QUIET = NoiseModel(offset_counts=100.0, read_noise_e=0.0, dark_current_e_s=0.0, gain_e_per_count=1.0)
# Time allowed on top of a call's own timeout before it counts as hanging.
MARGIN_S = 1.0


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += max(seconds, 1e-4)


def line_scene(column: int, photoelectrons: float = 2000.0):
    """Light in one detector column only, over the whole height."""

    def scene(exposure):
        light = np.zeros(exposure.detector_shape)
        light[:, column] = photoelectrons
        return SceneFrame(light, np.random.default_rng(0))

    return scene


def top_rows_scene(n_rows: int, photoelectrons: float = 2000.0):
    def scene(exposure):
        light = np.zeros(exposure.detector_shape)
        light[:n_rows] = photoelectrons
        return SceneFrame(light, np.random.default_rng(0))

    return scene


def make_config(**changes) -> SpectrometerConfig:
    values = {"driver": "andor", "n_points": 64, "horizontal_binning": 4, "frame_timeout_s": 0.3, "temperature_timeout_s": 5.0}
    values.update(changes)
    return SpectrometerConfig(**values)


@pytest.fixture
def standin():
    shamrock = SimulatedShamrock()
    sdk = SimulatedSDK2(noise=QUIET, spectrograph=shamrock)
    with install_standin(sdk, shamrock):
        yield sdk


def open_with(faults=None, scene=None, **config_changes) -> tuple[AndorSpectrometer, SimulatedSDK2, object]:
    """Install a stand-in with faults and open the driver; return it, the SDK and the installation to exit."""
    plan = FaultPlan(list(faults)) if faults else None
    shamrock = SimulatedShamrock(faults=plan)
    sdk = SimulatedSDK2(scene, noise=QUIET, spectrograph=shamrock, faults=plan)
    installation = install_standin(sdk, shamrock)
    installation.__enter__()
    try:
        spectrometer = AndorSpectrometer(make_config(**config_changes), exposure_s=0.01)
    except BaseException:
        installation.__exit__(None, None, None)
        raise
    return spectrometer, sdk, installation


@pytest.fixture
def spectrometer(standin):
    with AndorSpectrometer(make_config(), exposure_s=0.01) as device:
        yield device


# ------------------------------------------------------------------ opening and settings


def test_spectrometer_implements_protocol(spectrometer):
    assert isinstance(spectrometer, Spectrometer)


def test_identity_names_camera_and_spectrograph(spectrometer):
    identity = spectrometer.identity()
    assert "DU420A-BEX2-DD" in identity
    assert "14520" in identity
    assert "KY-1931" in identity


def test_demo_readout_gives_256_wavelengths(spectrometer):
    wavelengths = spectrometer.wavelengths_nm()
    assert spectrometer.frame_shape() == (64, 256)
    assert wavelengths.shape == (256,)
    assert wavelengths[0] == pytest.approx(700, abs=5)
    assert wavelengths[-1] == pytest.approx(900, abs=5)


def test_frame_has_shape_and_dtype(spectrometer):
    frame = spectrometer.acquire()
    assert frame.shape == (64, 256)
    assert frame.dtype == np.uint16


def test_open_leaves_shutter_open(standin, spectrometer):
    assert standin.shutter_mode is ShutterMode.OPEN


def test_open_sets_single_acquisition_mode(standin, spectrometer):
    assert standin.acquisition_mode is AcquisitionMode.SINGLE


def test_open_sets_configured_temperature(standin):
    with AndorSpectrometer(make_config(temperature_c=-45.0)):
        assert standin._cooler.setpoint_c == -45
        assert standin._cooler.on


def test_open_without_temperature_turns_cooler_off(standin):
    with AndorSpectrometer(make_config(temperature_c=None)):
        assert not standin._cooler.on


def test_exposure_reads_back_camera_value(spectrometer):
    assert spectrometer.set_exposure_s(0.1) == pytest.approx(0.1, rel=1e-6)
    assert spectrometer.exposure_s == pytest.approx(0.1, rel=1e-6)


@pytest.mark.parametrize("exposure_s", [0.0, -1.0, float("nan")])
def test_invalid_exposure_is_rejected(spectrometer, exposure_s):
    with pytest.raises(DeviceError, match="exposure"):
        spectrometer.set_exposure_s(exposure_s)


def test_factory_reads_context_config(standin):
    context = stub_device_context()
    context.config = context.config.model_copy(update={"spectrometer": make_config()})
    with open_andor_spectrometer(context) as device:
        assert device.exposure_s == pytest.approx(context.config.scan.exposure_s, rel=1e-6)


# ------------------------------------------------------------------ geometry, row order, wavelength axis


@pytest.mark.parametrize(
    ("changes", "shape"),
    [
        ({}, (64, 256)),
        ({"horizontal_binning": 1}, (64, 1024)),
        ({"n_points": 32, "track_height_px": 4}, (32, 256)),
        ({"wavelength_range_nm": (750.0, 850.0)}, (64, 129)),
        ({"n_points": 10, "horizontal_binning": 3}, (10, 341)),
    ],
)
def test_frame_shape_follows_config(standin, changes, shape):
    with AndorSpectrometer(make_config(**changes)) as device:
        assert device.frame_shape() == shape
        assert device.acquire().shape == shape
        assert device.wavelengths_nm().shape == (shape[1],)


def test_geometry_is_centred_on_detector(spectrometer):
    geometry = spectrometer.readout_geometry
    rows = geometry.track_rows_px()
    assert rows[0] == (32, 35)
    assert rows[-1] == (221, 224)
    assert abs((geometry.detector_height_px - rows[-1][1]) - rows[0][0]) <= 1


def test_row_zero_is_top_of_detector(standin):
    standin.scene = top_rows_scene(n_rows=34)
    with AndorSpectrometer(make_config()) as device:
        frame = device.acquire().astype(float)
    assert frame[0].mean() > 1000
    assert frame[-1].mean() == pytest.approx(100)


@pytest.mark.parametrize(
    ("column", "changes"),
    [
        (100, {}),
        (513, {"horizontal_binning": 1}),
        (700, {"horizontal_binning": 8}),
        (600, {"wavelength_range_nm": (760.0, 880.0), "horizontal_binning": 2}),
        (301, {"wavelength_range_nm": (740.0, 860.0), "horizontal_binning": 5}),
    ],
)
def test_wavelength_axis_binned_like_frame(standin, column, changes):
    standin.scene = line_scene(column)
    with AndorSpectrometer(make_config(**changes)) as device:
        frame = device.acquire()
        calibration = device.detector_calibration_nm()
        wavelengths = device.wavelengths_nm()
    bright = int(np.argmax(frame.mean(axis=0)))
    bin_width_nm = device.readout_geometry.column_bin_px * abs(calibration[1] - calibration[0])
    assert wavelengths[bright] == pytest.approx(calibration[column], abs=bin_width_nm / 2)


def test_wavelength_range_crops_axis(standin):
    with AndorSpectrometer(make_config(wavelength_range_nm=(750.0, 850.0))) as device:
        wavelengths = device.wavelengths_nm()
    assert wavelengths.min() >= 750.0
    assert wavelengths.max() <= 850.0


def test_bin_columns_averages_bins():
    geometry = ReadoutGeometry(10, 4, 1, 4, 0, 2, 8, 3)
    assert bin_columns(np.arange(10.0), geometry).tolist() == [3.0, 6.0]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"n_points": 300}, "exceeds the detector"),
        ({"n_points": 20, "track_height_px": 20}, "rows, the detector has"),
        ({"n_points": 4}, "binning limit"),
        ({"horizontal_binning": 40}, "horizontal_binning"),
        ({"wavelength_range_nm": (1100.0, 1200.0)}, "outside the detector"),
        ({"grating": 5}, "grating 5"),
        ({"grating": 3, "center_wavelength_nm": 1500.0}, "outside grating 3"),
    ],
)
def test_config_that_does_not_fit_is_rejected(standin, changes, message):
    with pytest.raises(DeviceError, match=message):
        AndorSpectrometer(make_config(**changes))


def test_failed_open_releases_camera(standin):
    with pytest.raises(DeviceError):
        AndorSpectrometer(make_config(n_points=300))
    assert AndorSDK2.libctl.get_opened_num() == 0
    assert Shamrock.libctl.get_opened_num() == 0


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        (Fault(FaultKind.REJECT, "GetHeadModel", occurrence=2), "GetHeadModel"),
        (Fault(FaultKind.REJECT, "ShamrockGetSerialNumber", occurrence=3), "ShamrockGetSerialNumber"),
        (Fault(FaultKind.REJECT, "SetShutter", occurrence=2), "SetShutter"),
        # pylablib probes the smallest region with SetImage and silently narrows its limits on a rejection.
        (Fault(FaultKind.REJECT, "SetImage", occurrence=2), "camera applied region"),
    ],
    ids=lambda value: value.command if isinstance(value, Fault) else "",
)
def test_open_failure_releases_libraries(fault, message):
    plan = FaultPlan([fault])
    shamrock = SimulatedShamrock(faults=plan)
    sdk = SimulatedSDK2(noise=QUIET, spectrograph=shamrock, faults=plan)
    with install_standin(sdk, shamrock):
        with pytest.raises(DeviceError, match=message):
            AndorSpectrometer(make_config())
        assert AndorSDK2.libctl.get_opened_num() == 0
        assert Shamrock.libctl.get_opened_num() == 0
    assert not sdk._initialized


# ------------------------------------------------------------------ cooler


def test_cooler_wait_succeeds_once_stable():
    clock = FakeClock()
    shamrock = SimulatedShamrock()
    sdk = SimulatedSDK2(noise=QUIET, spectrograph=shamrock, time_scale=1.0, readout_s=0.0, clock=clock, sleep=clock.sleep)
    with install_standin(sdk, shamrock):
        with AndorSpectrometer(make_config(temperature_c=-60.0, temperature_timeout_s=600.0), clock=clock, sleep=clock.sleep) as device:
            assert device.temperature_c() == pytest.approx(-60.0, abs=1.0)
    # Cooling 20 -> -60 C with a 20 s time constant reaches 1 C in about 88 s, then needs 10 s to settle.
    assert 90.0 <= clock.now <= 110.0


def test_cooler_wait_is_bounded_with_fake_clock():
    clock = FakeClock()
    shamrock = SimulatedShamrock()
    sdk = SimulatedSDK2(noise=QUIET, spectrograph=shamrock, time_scale=1.0, readout_s=0.0, clock=clock, sleep=clock.sleep)
    with install_standin(sdk, shamrock):
        with pytest.raises(DeviceTimeout, match="did not stabilise"):
            AndorSpectrometer(make_config(temperature_c=-60.0, temperature_timeout_s=30.0), clock=clock, sleep=clock.sleep)
    assert clock.now == pytest.approx(30.0, abs=1.0)


def test_unreachable_setpoint_times_out_in_real_time(standin):
    started = time.monotonic()
    with pytest.raises(DeviceTimeout, match="-95"):
        AndorSpectrometer(make_config(temperature_c=-95.0, temperature_timeout_s=0.2))
    assert time.monotonic() - started < 0.2 + MARGIN_S


# ------------------------------------------------------------------ missing libraries


@pytest.mark.skipif(sys.platform == "win32", reason="pylablib only refuses to load the DLL off Windows")
def test_missing_sdk_on_linux_is_unavailable():
    """Without the stand-in, pylablib's real loader raises OSError off Windows."""
    with pytest.raises(DeviceUnavailable, match="Andor SDK2") as caught:
        AndorSpectrometer(make_config())
    assert "Linux" in str(caught.value)
    assert isinstance(caught.value.__cause__, OSError)


def test_missing_sdk_dll_is_unavailable(mocker):
    mocker.patch.object(AndorSDK2.libctl, "preinit", side_effect=OSError("can't import library atmcd64d.dll"))
    with pytest.raises(DeviceUnavailable, match="install Andor Solis"):
        AndorSpectrometer(make_config())


def test_missing_shamrock_dll_is_unavailable(mocker):
    mocker.patch.object(Shamrock.libctl, "preinit", side_effect=OSError("can't import library ShamrockCIF64.dll"))
    sdk = SimulatedSDK2(noise=QUIET)
    with install_standin(sdk):
        with pytest.raises(DeviceUnavailable, match="Shamrock"):
            AndorSpectrometer(make_config())
        assert AndorSDK2.libctl.get_opened_num() == 0


def test_missing_camera_index_is_unavailable(standin):
    with pytest.raises(DeviceUnavailable, match="camera_index 1"):
        AndorSpectrometer(make_config(camera_index=1))


# ------------------------------------------------------------------ faults


@pytest.mark.parametrize(
    ("fault", "error", "message"),
    [
        (Fault(FaultKind.TIMEOUT, "frame"), DeviceTimeout, "without delivering"),
        (Fault(FaultKind.STALL, "frame"), DeviceTimeout, "no frame within"),
        (Fault(FaultKind.LATE, "frame", delay_s=2.0), DeviceTimeout, "no frame within"),
        (Fault(FaultKind.GARBLE, "frame"), DeviceProtocolError, "wrong size"),
        (Fault(FaultKind.GARBLE, "GetImages16"), DeviceProtocolError, "wrong size"),
        (Fault(FaultKind.REJECT, "frame"), DeviceError, "StartAcquisition returned error 20017"),
        (Fault(FaultKind.REJECT, "StartAcquisition"), DeviceError, "DRV_ACQUISITION_ERRORS"),
        (Fault(FaultKind.STALL, "StartAcquisition"), DeviceTimeout, "no frame within"),
        (Fault(FaultKind.DISCONNECT, "frame"), DeviceDisconnected, "DRV_USBERROR"),
        (Fault(FaultKind.DISCONNECT, "GetAcquisitionProgress"), DeviceDisconnected, "USB cable"),
    ],
    ids=lambda value: value.kind.value + "@" + value.command if isinstance(value, Fault) else "",
)
def test_acquire_fault_raises_without_hanging(fault, error, message):
    spectrometer, _, installation = open_with([fault])
    try:
        started = time.monotonic()
        with pytest.raises(error, match=message):
            spectrometer.acquire()
        assert time.monotonic() - started < 0.01 + 0.3 + MARGIN_S
    finally:
        spectrometer.close()
        installation.__exit__(None, None, None)


@pytest.mark.parametrize("kind", [FaultKind.TIMEOUT, FaultKind.STALL, FaultKind.GARBLE, FaultKind.REJECT])
def test_acquire_recovers_after_fault(kind):
    spectrometer, _, installation = open_with([Fault(kind, "frame", occurrence=1)])
    try:
        with pytest.raises(DeviceError):
            spectrometer.acquire()
        assert spectrometer.acquire().shape == (64, 256)
    finally:
        spectrometer.close()
        installation.__exit__(None, None, None)


def test_late_frame_within_timeout_arrives():
    spectrometer, _, installation = open_with([Fault(FaultKind.LATE, "frame", delay_s=0.05)])
    try:
        assert spectrometer.acquire().shape == (64, 256)
    finally:
        spectrometer.close()
        installation.__exit__(None, None, None)


def test_rejected_setting_names_function_and_code():
    spectrometer, _, installation = open_with([Fault(FaultKind.REJECT, "SetExposureTime", occurrence=3)])
    try:
        with pytest.raises(DeviceError, match=r"SetExposureTime returned error 20066 \(DRV_P1INVALID\)") as caught:
            spectrometer.set_exposure_s(0.2)
        assert not isinstance(caught.value, DeviceDisconnected)
    finally:
        spectrometer.close()
        installation.__exit__(None, None, None)


def test_spectrograph_disconnect_at_open_is_disconnected():
    with pytest.raises(DeviceDisconnected, match="ShamrockSetWavelength"):
        open_with([Fault(FaultKind.DISCONNECT, "ShamrockSetWavelength")])
    assert not isinstance(AndorSDK2.lib, SimulatedSDK2)


def test_skipped_frames_are_an_error(spectrometer, mocker):
    mocker.patch.object(spectrometer._camera, "get_frames_status", return_value=TFramesStatus(2, 0, 1, 32))
    with pytest.raises(DeviceError, match="overwritten"):
        spectrometer.acquire()


# ------------------------------------------------------------------ closing


def test_close_twice_is_safe(standin):
    device = AndorSpectrometer(make_config())
    device.close()
    device.close()
    assert standin.shutter_mode is ShutterMode.CLOSED
    assert AndorSDK2.libctl.get_opened_num() == 0
    assert Shamrock.libctl.get_opened_num() == 0


def test_acquire_after_close_is_rejected(standin):
    device = AndorSpectrometer(make_config())
    device.close()
    with pytest.raises(DeviceError, match="closed"):
        device.acquire()


def test_close_after_disconnect_does_not_raise():
    spectrometer, sdk, installation = open_with([Fault(FaultKind.DISCONNECT, "frame")])
    try:
        with pytest.raises(DeviceDisconnected):
            spectrometer.acquire()
        spectrometer.close()
        assert sdk.disconnected
    finally:
        installation.__exit__(None, None, None)
