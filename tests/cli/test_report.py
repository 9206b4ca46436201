"""The report: figures and index.html from real stores on disk, the map axes, and the scan preview."""

import logging
import struct
import time

import numpy as np
import pytest
from matplotlib.figure import Figure
from typer.testing import CliRunner

from fluoscan.acquisition.store import ScanStatus, ScanStore
from fluoscan.cli import figures
from fluoscan.cli.main import app
from fluoscan.cli.preview import PreviewWriter, preview_path
from fluoscan.cli.report import default_report_dir, loss_iterations, pearson_r, write_report
from fluoscan.cli.report_data import Unmixing, map_axes_of

N_LINES, N_POINTS, N_WAVELENGTHS = 12, 8, 16
STEP_MM, PITCH_MM, Y_START_MM = 0.75, 0.5, 5.0
NAMES = ["autofluorescence", "icg_lnp", "af750"]
DEVICE = "Andor <iDus> & Shamrock"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALL_FIGURES = {"raw.png", "spectra.png", "abundance.png", "residual.png", "loss.png", "sweep.png", "sweep_maps.png", "truth.png"}


def truth_maps():
    yy, xx = np.mgrid[0:N_LINES, 0:N_POINTS]
    body = np.exp(-(((xx - N_POINTS / 2) / 4) ** 2))
    tube1 = (xx == 2) & (yy > 3) & (yy < 9)
    tube2 = (xx == 5) & (yy > 5)
    return np.stack([body, tube1 * 0.8, tube2 * 0.6], axis=-1).astype(np.float32)


def spectra():
    wavelengths = np.linspace(700, 900, N_WAVELENGTHS)
    centres = [705, 826, 777]
    return np.stack([np.exp(-0.5 * ((wavelengths - c) / 30) ** 2) for c in centres]).astype(np.float32)


def write_unmixing(store, *, names=NAMES, sweep=True, sweep_abundance=True):
    """Write an unmixing/ group following the layout unmix_store writes."""
    rng = np.random.default_rng(3)
    abundance = truth_maps() * 1000 * (1 + rng.normal(0, 0.05, truth_maps().shape)).astype(np.float32)
    arrays = {
        "abundance": (abundance, ["y", "x", "component"]),
        "spectra": (spectra() * 1.1, ["component", "wavelength"]),
        "spectra_init": (spectra() + 0.05, ["component", "wavelength"]),
        "residual": (rng.random((N_LINES, N_POINTS)).astype(np.float32), ["y", "x"]),
        "loss": (np.geomspace(1e8, 1e5, 40).astype(np.float32), ["iteration"]),
    }
    with ScanStore.open(store.path, mode="r+") as writable:
        group = writable.group.require_group("unmixing")
        for name, (values, dims) in arrays.items():
            group.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=dims)[...] = values
        group.attrs.update(
            components=list(names),
            sparsity_target=[None, 0.9, 0.9],
            sparsity_achieved=[0.2, 0.91, 0.88],
            n_iter=40,
            converged=True,
            max_iter=500,
            tol=1e-5,
            loss="frobenius",
        )
        if sweep:
            targets = np.linspace(0.0, 0.95, 4)
            sweep_arrays = {
                "targets": (targets, ["target"]),
                "n_zeroed": (np.outer(targets, [0, 80, 70]).astype(np.int64), ["target", "component"]),
                "spectra_distance": (np.outer(1 - targets, [0.01, 0.3, 0.2]), ["target", "component"]),
            }
            if sweep_abundance:
                sweep_arrays["abundance"] = (np.stack([abundance * (1 - t / 2) for t in targets]), ["target", "y", "x", "component"])
            sweep_group = group.require_group("sweep")
            for name, (values, dims) in sweep_arrays.items():
                sweep_group.create_array(name, shape=values.shape, dtype=values.dtype, dimension_names=dims)[...] = values
        writable.write_group_coordinates("unmixing", list(names))


def make_store(path, *, lines_done=N_LINES, point_index=False, dark=True, truth=True, status=ScanStatus.COMPLETE, config=True):
    """Build a small store with ScanStore, as a scan writes it: mouse-like maps under three spectra."""
    rng = np.random.default_rng(0)
    cube = 500 + 3000 * truth_maps() @ spectra() + rng.normal(0, 10, (N_LINES, N_POINTS, N_WAVELENGTHS))
    attrs = {"devices": {"laser": "OBIS 690 (simulated)", "stage": "Zaber (simulated)", "spectrometer": DEVICE}}
    if config:
        attrs["config"] = {
            "scan": {"name": "test mouse", "y_start_mm": Y_START_MM, "step_mm": STEP_MM, "exposure_s": 0.1, "dark_frames": 2},
            "laser": {"driver": "simulated", "power_mw": 40.0, "wavelength_nm": 690.0},
            "stage": {"driver": "simulated"},
            "spectrometer": {"driver": "simulated", "temperature_c": -60.0},
        }
    store = ScanStore.create(
        path,
        n_lines=N_LINES,
        wavelengths_nm=np.linspace(700, 900, N_WAVELENGTHS),
        x=np.arange(N_POINTS, dtype=float) if point_index else np.arange(N_POINTS) * PITCH_MM,
        x_units="point index" if point_index else "mm",
        attrs=attrs,
    )
    if truth:
        store.write_truth(truth_maps(), spectra(), NAMES)
    if dark:
        store.write_dark(np.full((2, N_POINTS, N_WAVELENGTHS), 500, np.uint16))
    for index in range(lines_done):
        frame = np.clip(cube[index], 0, 65535).astype(np.uint16)
        store.write_line(index, frame, y_mm=Y_START_MM + index * STEP_MM, time_s=1.7e9 + index, laser_power_mw=40.0)
    store.set_status(status, "test")
    return store


def png_size(path):
    """Return (width, height) in pixels from a PNG's header."""
    header = path.read_bytes()[:24]
    assert header[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    """One report of a store with every group, shared by the tests that only read it."""
    path = tmp_path_factory.mktemp("full") / "mouse.zarr"
    write_unmixing(make_store(path))
    return write_report(path)


# ------------------------------------------------------------------------------- write_report


def test_full_report_has_every_figure(full_report):
    assert {p.name for p in full_report.glob("*.png")} == ALL_FIGURES
    assert (full_report / "index.html").is_file()


def test_full_report_folder_default(full_report):
    assert full_report.name == "mouse.zarr-report"
    assert full_report.parent == default_report_dir(full_report.parent / "mouse.zarr").parent


@pytest.mark.parametrize("name", sorted(ALL_FIGURES))
def test_figure_is_png_of_screen_size(full_report, name):
    width, height = png_size(full_report / name)
    assert 300 <= width <= 2400
    assert 250 <= height <= 1700


def test_index_shows_figures_and_metadata(full_report):
    page = (full_report / "index.html").read_text(encoding="utf-8")
    for name in ALL_FIGURES:
        assert f'src="{name}"' in page
    assert "complete (test)" in page
    assert "test mouse" in page
    assert "Andor &lt;iDus&gt; &amp; Shamrock" in page
    assert "<th>sparsity_target</th><td>[null, 0.9, 0.9]</td>" in page
    assert "<th>converged</th><td>true</td>" in page
    assert "12 of 12" in page


@pytest.mark.parametrize(
    ("kind", "build", "expected"),
    [
        ("raw only", dict(), {"raw.png"}),
        ("imported", dict(point_index=True, dark=False, truth=False, config=False), {"raw.png"}),
        ("aborted", dict(lines_done=5, status=ScanStatus.ABORTED), {"raw.png"}),
        ("nothing acquired", dict(lines_done=0, status=ScanStatus.ABORTED), set()),
    ],
)
def test_report_without_unmixing(tmp_path, kind, build, expected):
    make_store(tmp_path / "s.zarr", **build)
    folder = write_report(tmp_path / "s.zarr", tmp_path / "figures")
    assert folder == tmp_path / "figures"
    assert {p.name for p in folder.glob("*.png")} == expected
    assert "no <code>unmixing/</code> group" in (folder / "index.html").read_text(encoding="utf-8")


@pytest.mark.parametrize(
    ("unmixing", "expected_missing"),
    [
        (dict(sweep=False, names=["skin", "dye_a", "dye_b"]), {"sweep.png", "sweep_maps.png", "truth.png"}),
        (dict(sweep_abundance=False), {"sweep_maps.png"}),
    ],
    ids=["no sweep, names unlike truth", "sweep without maps"],
)
def test_report_partial_unmixing(tmp_path, unmixing, expected_missing):
    store = make_store(tmp_path / "s.zarr")
    write_unmixing(store, **unmixing)
    folder = write_report(tmp_path / "s.zarr")
    assert {p.name for p in folder.glob("*.png")} == ALL_FIGURES - expected_missing


@pytest.mark.parametrize(
    ("build", "force"),
    [(dict(), False), (dict(lines_done=7, status=ScanStatus.ABORTED), True)],
    ids=["complete scan", "aborted scan"],
)
@pytest.mark.filterwarnings("ignore::UserWarning")  # clipped negatives and max_iter reached on the tiny cube
def test_report_of_unmix_store_output(tmp_path, build, force):
    from fluoscan.unmixing import unmix_store

    make_store(tmp_path / "s.zarr", **build)
    unmix_store(tmp_path / "s.zarr", components=NAMES, max_iter=30, force=force)
    folder = write_report(tmp_path / "s.zarr")
    assert {p.name for p in folder.glob("*.png")} == ALL_FIGURES - {"sweep.png", "sweep_maps.png"}
    assert "<th>n_iter</th>" in (folder / "index.html").read_text(encoding="utf-8")


def test_report_leaves_no_partial_files(full_report):
    assert not list(full_report.glob(".*"))


def test_report_command_writes_folder(tmp_path):
    make_store(tmp_path / "s.zarr")
    result = CliRunner().invoke(app, ["report", str(tmp_path / "s.zarr"), "--output", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "figures written to" in result.output
    assert (tmp_path / "out" / "raw.png").is_file()


def test_report_command_missing_store(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "absent.zarr")])
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"error: store not found: {tmp_path / 'absent.zarr'}"
    assert "Traceback" not in result.output


# ------------------------------------------------------------------------------- map axes


@pytest.mark.parametrize(
    ("build", "x_units", "y_units", "first_y"),
    [
        (dict(), "mm", "mm", Y_START_MM),
        (dict(lines_done=5, status=ScanStatus.ABORTED), "mm", "mm", Y_START_MM),
        (dict(point_index=True), "point index", "mm", Y_START_MM),
        (dict(lines_done=5, status=ScanStatus.ABORTED, config=False), "mm", "line index", 0.0),
    ],
)
def test_map_axes_of_store(tmp_path, build, x_units, y_units, first_y):
    map_axes = map_axes_of(make_store(tmp_path / "s.zarr", **build))
    assert map_axes.x_units == x_units
    assert map_axes.y_units == y_units
    assert map_axes.y[0] == pytest.approx(first_y)
    assert np.all(np.isfinite(map_axes.y))
    assert np.all(np.diff(map_axes.y) > 0)


def test_map_extent_covers_pixel_edges():
    map_axes = figures.MapAxes(x=np.arange(4) * 0.5, y=5.0 + np.arange(3) * 0.75, x_units="mm", y_units="mm")
    assert map_axes.extent() == pytest.approx((-0.25, 1.75, 4.625, 6.875))


@pytest.mark.parametrize(("x_units", "aspect"), [("mm", 1.0), ("point index", "auto")])
def test_draw_map_labels_units(x_units, aspect):
    map_axes = figures.MapAxes(x=np.arange(N_POINTS, dtype=float), y=np.arange(N_LINES) * 0.5, x_units=x_units, y_units="mm")
    figure = Figure()
    ax = figure.subplots()
    figures.draw_map(figure, ax, truth_maps()[..., 0], map_axes, title="icg_lnp", colour_label="abundance (a.u.)", limits=(0, 1))
    assert ax.get_xlabel() == f"x ({x_units})"
    assert ax.get_ylabel() == "y (mm)"
    assert ax.get_title() == "icg_lnp"
    assert ax.get_aspect() == aspect
    assert figure.axes[1].get_ylabel() == "abundance (a.u.)"


def test_draw_map_y_grows_upwards_for_reverse_scan():
    map_axes = figures.MapAxes(x=np.arange(3.0), y=10.0 - np.arange(4), x_units="mm", y_units="mm")
    figure = Figure()
    ax = figure.subplots()
    figures.draw_map(figure, ax, np.zeros((4, 3)), map_axes, title="", colour_label="", limits=(0, 1))
    bottom, top = ax.get_ylim()
    assert bottom < top


# ------------------------------------------------------------------------------- colour limits


@pytest.mark.parametrize(
    ("values", "options", "expected"),
    [
        (np.r_[np.zeros(990), np.linspace(1, 10, 10)], dict(from_zero=True), (0.0, pytest.approx(9.991))),
        (np.r_[np.zeros(9990), np.linspace(1, 10, 10)], dict(from_zero=True), (0.0, pytest.approx(9.991))),
        (np.r_[np.linspace(0, 100, 10000), 1e9], dict(), (pytest.approx(1.0, abs=0.01), pytest.approx(99.9, abs=0.1))),
        (np.full(10, 3.0), dict(), (pytest.approx(2.85), pytest.approx(3.15))),
        (np.zeros(10), dict(from_zero=True), (0.0, 1.0)),
        (np.full(10, np.nan), dict(), (0.0, 1.0)),
    ],
    ids=["sparse map from zero", "very sparse map", "hot pixels ignored", "constant map widened", "all zero", "all NaN"],
)
def test_robust_limits(values, options, expected):
    assert figures.robust_limits(values, **options) == expected


# ------------------------------------------------------------------------------- preview


def test_preview_drawn_every_n_lines(tmp_path):
    store = make_store(tmp_path / "s.zarr", lines_done=6, status=ScanStatus.ACQUIRING)
    preview = PreviewWriter(store.path, every=4)
    for index in range(3):
        preview(index)
    assert preview.wait(10.0)
    assert not preview_path(store.path).exists()
    preview(3)
    assert preview.wait(10.0)
    assert png_size(preview_path(store.path))[0] > 100


def test_preview_path_next_to_store(tmp_path):
    assert preview_path(tmp_path / "mouse.zarr") == tmp_path / "mouse.zarr-preview.png"


def test_preview_image_is_dark_subtracted_mean(tmp_path):
    store = make_store(tmp_path / "s.zarr", lines_done=6, status=ScanStatus.ACQUIRING)
    preview = PreviewWriter(store.path, every=1)
    preview.draw()
    expected = (np.asarray(store.raw[:6], dtype=np.float64) - 500).mean(axis=2)
    np.testing.assert_allclose(preview.image[:6], expected)
    assert np.all(np.isnan(preview.image[6:]))


def test_preview_reads_new_lines_later(tmp_path):
    store = make_store(tmp_path / "s.zarr", lines_done=2, status=ScanStatus.ACQUIRING)
    preview = PreviewWriter(store.path, every=1)
    preview.draw()
    store.write_line(2, np.full((N_POINTS, N_WAVELENGTHS), 600, np.uint16), y_mm=6.5, time_s=0.0, laser_power_mw=40.0)
    preview.draw()
    np.testing.assert_allclose(preview.image[2], 100.0)


def test_preview_calls_return_at_once(tmp_path):
    store = make_store(tmp_path / "s.zarr", status=ScanStatus.ACQUIRING)
    preview = PreviewWriter(store.path, every=1)
    started = time.perf_counter()
    for index in range(N_LINES):
        preview(index)
    elapsed_s = time.perf_counter() - started
    assert preview.wait(10.0)
    assert elapsed_s < 0.1


def test_preview_failure_logged_not_raised(tmp_path, caplog):
    preview = PreviewWriter(tmp_path / "absent.zarr", every=1)
    with caplog.at_level(logging.WARNING, logger="fluoscan.cli.preview"):
        preview(0)
        assert preview.wait(10.0)
    assert "scan preview" in caplog.text
    assert "store not found" in caplog.text
    assert not preview_path(tmp_path / "absent.zarr").exists()


def test_preview_leaves_no_partial_file(tmp_path):
    store = make_store(tmp_path / "s.zarr", lines_done=3, status=ScanStatus.ACQUIRING)
    PreviewWriter(store.path, every=1).draw()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.zarr", "s.zarr-preview.png"]


@pytest.mark.parametrize("every", [0, -3])
def test_preview_rejects_bad_interval(tmp_path, every):
    with pytest.raises(ValueError, match=f"at least 1 line, got {every}"):
        PreviewWriter(tmp_path / "s.zarr", every=every)


# ------------------------------------------------------------------------------- helpers


@pytest.mark.parametrize(
    ("n_entries", "loss_attrs", "unmixing_attrs", "expected"),
    [
        (4, {}, {}, [0, 1, 2, 3]),
        (4, {"every_iterations": 10}, {"n_iter": 25}, [0, 10, 20, 25]),
        (3, {"every_iterations": 10}, {"n_iter": 20}, [0, 10, 20]),
        (1, {"every_iterations": 10}, {"n_iter": 0}, [0]),
    ],
)
def test_loss_iterations(n_entries, loss_attrs, unmixing_attrs, expected):
    unmixing = Unmixing(names=["a"], attrs=unmixing_attrs, loss=np.ones(n_entries), loss_attrs=loss_attrs)
    assert list(loss_iterations(unmixing)) == expected


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ([1.0, 2.0, 3.0], [2.0, 4.0, 6.0], 1.0),
        ([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, np.nan], 1.0),
        ([1.0, 2.0, 3.0], [3.0, 2.0, 1.0], -1.0),
    ],
)
def test_pearson_r(a, b, expected):
    assert pearson_r(np.array(a), np.array(b)) == pytest.approx(expected)


def test_pearson_r_constant_map():
    assert np.isnan(pearson_r(np.ones(5), np.arange(5.0)))


def test_preview_waits_for_last_line(tmp_path):
    store = make_store(tmp_path / "s.zarr", lines_done=N_LINES - 1, status=ScanStatus.ACQUIRING)
    preview = PreviewWriter(store.path, every=1000)
    preview(N_LINES - 1)
    store.write_line(N_LINES - 1, np.full((N_POINTS, N_WAVELENGTHS), 700, np.uint16), y_mm=20.0, time_s=0.0, laser_power_mw=40.0)
    assert preview.wait(10.0)
    assert preview_path(store.path).is_file()
    np.testing.assert_allclose(preview.image[-1], 200.0)
    assert np.all(np.isfinite(preview.image))


def test_preview_skips_lines_between_intervals(tmp_path):
    store = make_store(tmp_path / "s.zarr", status=ScanStatus.ACQUIRING)
    preview = PreviewWriter(store.path, every=1000)
    for index in range(N_LINES - 1):
        preview(index)
    assert preview.wait(10.0)
    assert not preview_path(store.path).exists()
