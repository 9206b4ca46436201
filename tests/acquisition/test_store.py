"""The scan store on disk: layout, line writing, status and the writer thread."""

import threading

import numpy as np
import pytest
import zarr

from fluoscan.acquisition.store import ScanStatus, ScanStore, StoreError
from fluoscan.acquisition.writer import LineRecord, LineWriter, WriterError

N_LINES, N_POINTS, N_WAVELENGTHS = 5, 4, 6


def make_store(path, **kwargs):
    return ScanStore.create(
        path,
        n_lines=N_LINES,
        wavelengths_nm=np.linspace(700, 900, N_WAVELENGTHS),
        x=np.arange(N_POINTS) * 0.5,
        x_units="mm",
        **kwargs,
    )


def frame(value):
    return np.full((N_POINTS, N_WAVELENGTHS), value, dtype=np.uint16)


def test_create_follows_contract(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    group = zarr.open_group(tmp_path / "s.zarr", mode="r")
    assert group["raw"].shape == (N_LINES, N_POINTS, N_WAVELENGTHS)
    assert group["raw"].chunks == (1, N_POINTS, N_WAVELENGTHS)
    assert tuple(group["raw"].metadata.dimension_names) == ("y", "x", "wavelength")
    assert group["wavelength"].attrs["units"] == "nm"
    assert group.attrs["status"] == "acquiring"
    assert store.first_missing_line() == 0


def test_existing_store_not_overwritten(tmp_path):
    make_store(tmp_path / "s.zarr").write_line(0, frame(7), y_mm=0.0, time_s=1.0, laser_power_mw=1.0)
    with pytest.raises(StoreError, match=r"already exists; pass --overwrite"):
        make_store(tmp_path / "s.zarr")
    assert ScanStore.open(tmp_path / "s.zarr").raw[0, 0, 0] == 7


def test_overwrite_replaces_store(tmp_path):
    make_store(tmp_path / "s.zarr").write_line(0, frame(7), y_mm=0.0, time_s=1.0, laser_power_mw=1.0)
    store = make_store(tmp_path / "s.zarr", overwrite=True)
    assert store.first_missing_line() == 0


def test_done_line_never_overwritten(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    store.write_line(2, frame(3), y_mm=1.0, time_s=1.0, laser_power_mw=1.0)
    with pytest.raises(StoreError, match=r"line 2 .* already written"):
        store.write_line(2, frame(9), y_mm=1.0, time_s=2.0, laser_power_mw=1.0)
    assert int(store.raw[2, 0, 0]) == 3


def test_wrong_frame_shape_rejected(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(StoreError, match=r"shape \(3, 3\), the store expects \(4, 6\)"):
        store.write_line(0, np.zeros((3, 3), np.uint16), y_mm=0.0, time_s=0.0, laser_power_mw=0.0)
    assert not store.line_done()[0]


def test_line_metadata_written(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    store.write_line(1, frame(5), y_mm=0.75, time_s=123.0, laser_power_mw=39.5)
    reopened = ScanStore.open(tmp_path / "s.zarr")
    assert reopened.y_mm()[1] == 0.75
    assert reopened.group["line_time"][1] == 123.0
    assert reopened.group["laser_power"][1] == 39.5
    assert np.isnan(reopened.y_mm()[0])
    assert reopened.first_missing_line() == 0


def test_dark_frames_and_mean(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    frames = np.stack([frame(100), frame(103)])
    store.write_dark(frames)
    np.testing.assert_array_equal(store.dark_frames(), frames)
    np.testing.assert_allclose(store.dark(), 101.5)
    store.write_line(0, frame(200), y_mm=0.0, time_s=0.0, laser_power_mw=0.0)
    np.testing.assert_allclose(store.read_cube()[0], 98.5)


def test_status_final_records_reason(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    store.set_status(ScanStatus.ABORTED, "ScanAborted: SIGINT")
    attrs = ScanStore.open(tmp_path / "s.zarr").attrs
    assert attrs["status"] == "aborted"
    assert attrs["end_reason"] == "ScanAborted: SIGINT"
    assert attrs["finished"].endswith("+00:00")


@pytest.mark.parametrize(
    ("make", "expected"),
    [
        (lambda p: None, r"store not found"),
        (lambda p: zarr.open_group(p, mode="w"), r"not a fluoscan scan store: it has no 'raw' array"),
    ],
)
def test_open_rejects_non_stores(tmp_path, make, expected):
    make(tmp_path / "x.zarr")
    with pytest.raises(StoreError, match=expected):
        ScanStore.open(tmp_path / "x.zarr")


def test_writer_writes_every_queued_line(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    with LineWriter(store, max_queue_lines=2) as writer:
        for i in range(N_LINES):
            writer.put(LineRecord(i, frame(i), y_mm=float(i), time_s=0.0, laser_power_mw=0.0))
    assert store.line_done().all()
    assert [int(store.raw[i, 0, 0]) for i in range(N_LINES)] == list(range(N_LINES))


def test_writer_drains_queue_when_loop_fails(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    with pytest.raises(RuntimeError, match="camera failed"):
        with LineWriter(store, max_queue_lines=8) as writer:
            for i in range(3):
                writer.put(LineRecord(i, frame(i), y_mm=float(i), time_s=0.0, laser_power_mw=0.0))
            raise RuntimeError("camera failed")
    assert store.line_done().tolist() == [True, True, True, False, False]


class SlowStore:
    """Wraps a store so that writes block until released: the queue fills up."""

    def __init__(self, store):
        self._store = store
        self.path = store.path
        self.release = threading.Event()
        self.writing = threading.Event()

    def write_lines(self, *args, **kwargs):
        self.writing.set()
        self.release.wait(timeout=5)
        self._store.write_lines(*args, **kwargs)


def test_writer_full_queue_waits_and_counts(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    slow = SlowStore(store)
    writer = LineWriter(slow, max_queue_lines=1)
    with writer:
        writer.put(LineRecord(0, frame(0), y_mm=0.0, time_s=0.0, laser_power_mw=0.0))
        assert slow.writing.wait(timeout=5)
        writer.put(LineRecord(1, frame(1), y_mm=0.0, time_s=0.0, laser_power_mw=0.0))
        threading.Timer(0.2, slow.release.set).start()
        writer.put(LineRecord(2, frame(2), y_mm=0.0, time_s=0.0, laser_power_mw=0.0))
    assert writer.waits_for_disk == 1
    assert store.line_done()[:3].all()


class FailingStore:
    def __init__(self, store, fail_at):
        self._store, self.path, self.fail_at = store, store.path, fail_at

    def write_lines(self, indices, *args, **kwargs):
        if self.fail_at in indices:
            raise OSError(28, "No space left on device")
        self._store.write_lines(indices, *args, **kwargs)


def test_writer_error_reaches_acquisition_loop(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    writer = LineWriter(FailingStore(store, fail_at=1), max_queue_lines=4)
    with pytest.raises(WriterError, match=r"writing line 1 to .* failed: .*No space left"):
        with writer:
            for i in range(N_LINES):
                writer.put(LineRecord(i, frame(i), y_mm=0.0, time_s=0.0, laser_power_mw=0.0))
    assert store.line_done()[0]
    assert not store.line_done()[1]


def test_writer_keeps_lines_before_failing_one_in_batch(tmp_path):
    store = make_store(tmp_path / "s.zarr")
    slow = SlowStore(FailingStore(store, fail_at=3))
    writer = LineWriter(slow, max_queue_lines=8)
    with pytest.raises(WriterError, match=r"writing line 3 "):
        with writer:
            writer.put(LineRecord(0, frame(0), y_mm=0.0, time_s=0.0, laser_power_mw=0.0))
            assert slow.writing.wait(timeout=5)
            for i in range(1, N_LINES):
                writer.put(LineRecord(i, frame(i), y_mm=0.0, time_s=0.0, laser_power_mw=0.0))
            slow.release.set()
    assert store.line_done().tolist() == [True, True, True, False, False]
