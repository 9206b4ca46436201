"""The replay spectrometer: recorded frames come back bit for bit, chosen by the stage position."""

from __future__ import annotations

import numpy as np
import pytest

from fluoscan.acquisition.config import parse_config
from fluoscan.acquisition.store import ScanStore
from fluoscan.drivers import DeviceError, DeviceUnavailable, Spectrometer
from fluoscan.simulators.replay import ReplaySpectrometer, open_replay_spectrometer
from fluoscan.simulators.spectrometer import StubLaser, StubStage, stub_device_context

N_LINES, N_POINTS, N_WAVELENGTHS = 6, 5, 7
Y_START_MM, STEP_MM = 2.0, 0.75


def random_frames(dtype: np.dtype, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "u":
        return rng.integers(0, 65536, size=shape, dtype=np.uint64).astype(dtype)
    return (rng.normal(size=shape) * 1e3).astype(dtype)


def write_store(path, dtype=np.uint16, *, done=None, dark_frames=3) -> tuple[ScanStore, np.ndarray]:
    """Create a store with random frames on lines marked done; return it and the full cube."""
    store = ScanStore.create(
        path,
        n_lines=N_LINES,
        wavelengths_nm=np.linspace(700, 900, N_WAVELENGTHS),
        x=np.arange(N_POINTS) * 0.5,
        x_units="mm",
        dtype=dtype,
    )
    cube = random_frames(dtype, (N_LINES, N_POINTS, N_WAVELENGTHS), seed=1)
    if dark_frames:
        store.write_dark(random_frames(dtype, (dark_frames, N_POINTS, N_WAVELENGTHS), seed=2))
    for index in range(N_LINES) if done is None else done:
        store.write_line(index, cube[index], y_mm=Y_START_MM + index * STEP_MM, time_s=0.0, laser_power_mw=40.0)
    return store, cube


def replay_of(path, *, emission=True, position_mm=Y_START_MM) -> tuple[ReplaySpectrometer, StubLaser, StubStage]:
    laser, stage = StubLaser(), StubStage(position_mm=position_mm)
    laser.set_emission(emission)
    return ReplaySpectrometer(path, laser=laser, stage=stage), laser, stage


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_replay_copies_raw_bit_for_bit(tmp_path, dtype):
    _, cube = write_store(tmp_path / "recorded.zarr", dtype)
    replay, _, stage = replay_of(tmp_path / "recorded.zarr")
    copy = ScanStore.create(
        tmp_path / "copy.zarr",
        n_lines=N_LINES,
        wavelengths_nm=replay.wavelengths_nm(),
        x=np.arange(N_POINTS) * 0.5,
        x_units="mm",
        dtype=dtype,
    )
    for index in range(N_LINES):
        y_mm = stage.move_to(Y_START_MM + index * STEP_MM)
        copy.write_line(index, replay.acquire(), y_mm=y_mm, time_s=0.0, laser_power_mw=40.0)
    replayed = np.asarray(copy.raw[:])
    assert replayed.dtype == np.dtype(dtype)
    assert replayed.tobytes() == cube.tobytes()


def test_replay_implements_protocol(tmp_path):
    write_store(tmp_path / "recorded.zarr")
    replay, _, _ = replay_of(tmp_path / "recorded.zarr")
    assert isinstance(replay, Spectrometer)
    assert replay.frame_shape() == (N_POINTS, N_WAVELENGTHS)
    assert np.array_equal(replay.wavelengths_nm(), np.linspace(700, 900, N_WAVELENGTHS))


def test_dark_frames_come_back_in_order(tmp_path):
    store, _ = write_store(tmp_path / "recorded.zarr")
    replay, _, _ = replay_of(tmp_path / "recorded.zarr", emission=False)
    recorded = store.dark_frames()
    replayed = np.stack([replay.acquire() for _ in range(len(recorded))])
    assert replayed.tobytes() == recorded.tobytes()


def test_dark_frames_repeat_when_exhausted(tmp_path):
    store, _ = write_store(tmp_path / "recorded.zarr", dark_frames=2)
    replay, _, _ = replay_of(tmp_path / "recorded.zarr", emission=False)
    frames = [replay.acquire() for _ in range(3)]
    assert np.array_equal(frames[2], store.dark_frames()[0])


@pytest.mark.parametrize("dtype", [np.uint16, np.float32])
def test_missing_dark_frames_are_zeros(tmp_path, dtype):
    write_store(tmp_path / "recorded.zarr", dtype, dark_frames=0)
    replay, _, _ = replay_of(tmp_path / "recorded.zarr", emission=False)
    frame = replay.acquire()
    assert frame.dtype == np.dtype(dtype)
    assert not frame.any()


@pytest.mark.parametrize("offset_mm", [0.0, 0.1, -0.18])
def test_nearest_line_within_tolerance(tmp_path, offset_mm):
    _, cube = write_store(tmp_path / "recorded.zarr")
    replay, _, _ = replay_of(tmp_path / "recorded.zarr", position_mm=Y_START_MM + 3 * STEP_MM + offset_mm)
    assert np.array_equal(replay.acquire(), cube[3])


@pytest.mark.parametrize("position_mm", [Y_START_MM + 1.5 * STEP_MM, Y_START_MM - 1.0, 50.0])
def test_position_without_line_is_error(tmp_path, position_mm):
    write_store(tmp_path / "recorded.zarr")
    replay, _, _ = replay_of(tmp_path / "recorded.zarr", position_mm=position_mm)
    with pytest.raises(DeviceError, match="no recorded line"):
        replay.acquire()


def test_lines_not_done_are_not_played(tmp_path):
    write_store(tmp_path / "recorded.zarr", done=[0, 1, 2])
    replay, _, _ = replay_of(tmp_path / "recorded.zarr", position_mm=Y_START_MM + 4 * STEP_MM)
    with pytest.raises(DeviceError, match="no recorded line"):
        replay.acquire()


def test_missing_store_is_unavailable(tmp_path):
    with pytest.raises(DeviceUnavailable, match="cannot open replay_store"):
        ReplaySpectrometer(tmp_path / "absent.zarr")


def test_acquire_after_close_is_rejected(tmp_path):
    write_store(tmp_path / "recorded.zarr")
    replay, _, _ = replay_of(tmp_path / "recorded.zarr")
    replay.close()
    with pytest.raises(DeviceError, match="closed"):
        replay.acquire()


def test_factory_uses_context_devices(tmp_path):
    _, cube = write_store(tmp_path / "recorded.zarr")
    config = parse_config({"spectrometer": {"driver": "replay", "replay_store": str(tmp_path / "recorded.zarr")}})
    context = stub_device_context(config)
    context.laser.set_emission(True)
    context.stage.move_to(Y_START_MM + 2 * STEP_MM)
    with open_replay_spectrometer(context) as replay:
        assert np.array_equal(replay.acquire(), cube[2])
