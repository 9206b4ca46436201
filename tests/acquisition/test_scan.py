"""The scan procedure end to end on the simulated devices: store contract, checks before emission, resume."""

import shutil

import numpy as np
import pytest

from fluoscan.acquisition.config import ConfigError
from fluoscan.acquisition.scan import run_scan
from fluoscan.acquisition.store import ScanStatus, ScanStore, StoreError, store_parts
from fluoscan.drivers import DeviceError
from fluoscan.simulators.faults import Fault, FaultKind
from fluoscan.tests.acquisition.scan_helpers import assert_same_cube, recording_laser, small_config


@pytest.fixture
def laser():
    with recording_laser() as served:
        yield served


@pytest.fixture(scope="module")
def reference_cube(tmp_path_factory):
    """The raw cube of an uninterrupted small scan."""
    path = tmp_path_factory.mktemp("reference") / "reference.zarr"
    run_scan(small_config(), path)
    return ScanStore.open(path).raw[:]


def test_scan_follows_store_contract(tmp_path, laser):
    config = laser.config()
    path = run_scan(config, tmp_path / "s.zarr")
    store = ScanStore.open(path)

    assert store.status is ScanStatus.COMPLETE
    assert store.line_done().all()
    assert store.shape == (8, 16, 64)
    np.testing.assert_allclose(store.y_mm(), config.scan.positions_mm(), atol=1e-4)
    assert 690 < store.wavelengths_nm().min() < store.wavelengths_nm().max() < 910
    assert store.dark_frames().shape == (2, 16, 64)
    assert store.attrs["config"] == config.to_dict()
    assert set(store.attrs["devices"]) == {"laser", "stage", "spectrometer"}
    assert "OBIS" in store.attrs["devices"]["laser"]
    assert store.attrs["end_reason"] == "all lines acquired"
    assert np.all(np.diff(store.group["line_time"][:]) > 0)
    np.testing.assert_allclose(store.group["laser_power"][:], config.laser.power_mw)
    assert store.group["truth"]["abundance"].shape == (8, 16, 3)


def test_laser_off_after_scan(tmp_path, laser):
    run_scan(laser.config(), tmp_path / "s.zarr")
    assert not laser.device.emission
    assert laser.emission_requests()[-1].upper().endswith("OFF")


def test_dark_frames_taken_with_laser_off(tmp_path, laser):
    path = run_scan(laser.config(), tmp_path / "s.zarr")
    store = ScanStore.open(path)
    dark_mean = store.dark_frames().mean()
    lines_mean = store.raw[:].mean()
    assert dark_mean < store.attrs["config"]["simulation"]["phantom"]["offset_counts"] + 50
    assert lines_mean > dark_mean + 100


def test_scan_matches_reference_cube(tmp_path, reference_cube):
    path = run_scan(small_config(), tmp_path / "s.zarr")
    assert_same_cube(ScanStore.open(path).raw[:], reference_cube)


def test_existing_store_kept_without_overwrite(tmp_path, laser):
    path = run_scan(laser.config(), tmp_path / "s.zarr")
    before = ScanStore.open(path).raw[:]
    requests_before = len(laser.requests)
    with pytest.raises(StoreError, match=r"already exists; pass --overwrite"):
        run_scan(laser.config(), path)
    assert_same_cube(ScanStore.open(path).raw[:], before)
    assert len(laser.requests) == requests_before


def test_overwrite_replaces_store(tmp_path, laser):
    path = run_scan(laser.config(), tmp_path / "s.zarr")
    run_scan(laser.config(scan={"n_lines": 4}), path, overwrite=True)
    assert ScanStore.open(path).shape[0] == 4


@pytest.mark.parametrize(
    ("setup", "config_changes", "error", "message"),
    [
        (lambda laser: setattr(laser.device, "interlock_closed", False), {}, DeviceError, r"interlock is open"),
        (lambda laser: setattr(laser.device, "key_on", False), {}, DeviceError, r"interlock is open \(or the key switch is off\)"),
        (lambda laser: None, {"laser": {"power_mw": 5000.0}}, ConfigError, r"laser\.power_mw = 5000 is outside the laser's range"),
        (
            lambda laser: None,
            {"scan": {"y_start_mm": 140.0, "step_mm": 2.0}},
            ConfigError,
            r"scan positions 140\.\.154 mm leave the stage's travel 0\.\.150 mm",
        ),
        (lambda laser: None, {"stage": {"homing": "require"}}, DeviceError, r"stage is not homed and stage\.homing = \"require\""),
    ],
)
def test_checks_fail_before_emission(tmp_path, laser, setup, config_changes, error, message):
    setup(laser)
    with pytest.raises(error, match=message):
        run_scan(laser.config(**config_changes), tmp_path / "s.zarr")
    assert not any(request.upper().endswith("ON") for request in laser.emission_requests())
    assert not laser.device.emission
    assert not (tmp_path / "s.zarr").exists()


def test_disk_space_checked_before_emission(tmp_path, laser, mocker):
    usage = shutil.disk_usage(tmp_path)
    mocker.patch("fluoscan.acquisition.scan.shutil.disk_usage", return_value=usage._replace(free=1000))
    with pytest.raises(StoreError, match=r"not enough disk space .* 0\.00 GB are free"):
        run_scan(laser.config(), tmp_path / "s.zarr")
    assert not any(request.upper().endswith("ON") for request in laser.emission_requests())


def test_missing_output_folder_rejected(tmp_path, laser):
    with pytest.raises(StoreError, match=r"output folder .*nowhere does not exist"):
        run_scan(laser.config(), tmp_path / "nowhere" / "s.zarr")
    assert laser.requests == []


def test_on_complete_and_on_line_called(tmp_path):
    lines, completed = [], []
    run_scan(small_config(), tmp_path / "s.zarr", on_line=lines.append, on_complete=completed.append)
    assert lines == list(range(8))
    assert completed == [tmp_path / "s.zarr"]


def interrupted_scan(path, at_line):
    """Run the small scan until the stage rejects the move of ``at_line``."""
    faults = [Fault(FaultKind.REJECT, command="move abs", occurrence=at_line + 1)]
    with pytest.raises(DeviceError):
        run_scan(small_config(), path, device_options={"stage_faults": faults})


def test_aborted_scan_keeps_finished_lines(tmp_path):
    interrupted_scan(tmp_path / "s.zarr", at_line=5)
    store = ScanStore.open(tmp_path / "s.zarr")
    assert store.status is ScanStatus.ABORTED
    assert store.line_done().tolist() == [True] * 5 + [False] * 3
    assert "move" in store.attrs["end_reason"]


def test_resume_completes_bit_identical(tmp_path, reference_cube):
    interrupted_scan(tmp_path / "s.zarr", at_line=5)
    run_scan(small_config(), tmp_path / "s.zarr", resume=True)
    store = ScanStore.open(tmp_path / "s.zarr")
    assert store.status is ScanStatus.COMPLETE
    assert_same_cube(store.raw[:], reference_cube)


def test_resume_keeps_first_dark(tmp_path):
    interrupted_scan(tmp_path / "s.zarr", at_line=3)
    dark_before = ScanStore.open(tmp_path / "s.zarr").dark_frames()
    run_scan(small_config(), tmp_path / "s.zarr", resume=True)
    np.testing.assert_array_equal(ScanStore.open(tmp_path / "s.zarr").dark_frames(), dark_before)


def test_resume_allows_new_timeouts(tmp_path):
    interrupted_scan(tmp_path / "s.zarr", at_line=3)
    run_scan(small_config(stage={"timeout_s": 0.5}, laser={"timeout_s": 0.5}), tmp_path / "s.zarr", resume=True)
    assert ScanStore.open(tmp_path / "s.zarr").status is ScanStatus.COMPLETE


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"scan": {"exposure_s": 0.02}}, r"scan\.exposure_s: store has 0\.01, configuration has 0\.02"),
        ({"simulation": {"seed": 4}}, r"simulation\.seed: store has 3, configuration has 4"),
        ({"spectrometer": {"n_points": 8}}, r"spectrometer\.n_points"),
    ],
)
def test_resume_refuses_other_configuration(tmp_path, changes, message):
    interrupted_scan(tmp_path / "s.zarr", at_line=3)
    with pytest.raises(ConfigError, match=message):
        run_scan(small_config(**changes), tmp_path / "s.zarr", resume=True)
    assert ScanStore.open(tmp_path / "s.zarr").line_done().sum() == 3


def test_resume_of_missing_store(tmp_path):
    with pytest.raises(StoreError, match=r"cannot resume: .*s\.zarr contains no scan; start it without --resume"):
        run_scan(small_config(), tmp_path / "s.zarr", resume=True)


def test_resume_and_overwrite_exclusive(tmp_path):
    with pytest.raises(ConfigError, match=r"--resume and --overwrite exclude each other"):
        run_scan(small_config(), tmp_path / "s.zarr", resume=True, overwrite=True)


def reference_config(**sections):
    """The small scan of the animal before the markers: the phantom without tubes."""
    return small_config(simulation={"phantom": {"markers": []}}, **sections)


@pytest.mark.parametrize("reference_first", [True, False], ids=["reference first", "scan first"])
def test_reference_and_scan_share_store(tmp_path, reference_first):
    path = tmp_path / "s.zarr"
    order = [True, False] if reference_first else [False, True]
    for reference in order:
        config = reference_config() if reference else small_config()
        run_scan(config, path, reference=reference)
    assert store_parts(path) == {"scan", "reference"}
    scan = ScanStore.open(path)
    reference = ScanStore.open(path, part="reference")
    assert scan.status is ScanStatus.COMPLETE
    assert reference.status is ScanStatus.COMPLETE
    assert reference.attrs["config"]["simulation"]["phantom"]["markers"] == []
    assert reference.raw[:].mean() < scan.raw[:].mean()


def test_reference_kept_without_overwrite(tmp_path):
    path = tmp_path / "s.zarr"
    run_scan(reference_config(), path, reference=True)
    with pytest.raises(StoreError, match=r"already holds a reference acquisition; pass --overwrite"):
        run_scan(reference_config(), path, reference=True)
    run_scan(reference_config(scan={"n_lines": 4}), path, reference=True, overwrite=True)
    assert ScanStore.open(path, part="reference").shape[0] == 4


def test_reference_not_unmixed(tmp_path):
    completed = []
    run_scan(reference_config(), tmp_path / "s.zarr", reference=True, on_complete=completed.append)
    assert completed == []


def test_scan_only_reference_store_opens_clearly(tmp_path):
    run_scan(reference_config(), tmp_path / "s.zarr", reference=True)
    with pytest.raises(StoreError, match=r"holds only a reference acquisition so far"):
        ScanStore.open(tmp_path / "s.zarr")


def test_output_that_is_not_a_store_refused(tmp_path):
    (tmp_path / "s.zarr").mkdir()
    (tmp_path / "s.zarr" / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match=r"exists and is not a fluoscan store"):
        run_scan(small_config(), tmp_path / "s.zarr")
    assert (tmp_path / "s.zarr" / "notes.txt").read_text() == "mine"


def test_unmixing_starts_from_reference(tmp_path):
    from fluoscan.acquisition.config import ComponentConfig
    from fluoscan.unmixing import unmix_store

    path = tmp_path / "s.zarr"
    run_scan(reference_config(), path, reference=True)
    run_scan(small_config(), path)
    components = [
        ComponentConfig(name="autofluorescence", spectrum="reference"),
        ComponentConfig(name="icg_lnp", sparsity=0.9, spectrum="library:icg_lnp"),
        ComponentConfig(name="af750", sparsity=0.9, spectrum="library:af750"),
    ]
    unmix_store(path, components=components, max_iter=20)
    reference = ScanStore.open(path, part="reference")
    expected = reference.read_cube().mean(axis=(0, 1))
    start = ScanStore.open(path).group["unmixing"]["spectra_init"][0]
    np.testing.assert_allclose(start / start.max(), expected / expected.max(), atol=1e-5)
