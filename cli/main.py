"""The ``fluoscan`` command: scan, replay, unmix, import, and the device helpers.

Every command ends an error with one line on stderr and a non-zero exit status; ``-v`` adds debug
logging and the traceback. A scan stopped by Ctrl-C exits with 130, by SIGTERM with 143.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from fluoscan.cli.errors import handle_errors
from fluoscan.cli.progress import make_progress

app = typer.Typer(
    help="Spectrally resolved NIR fluorescence scanning of small animals, with sparse NMF unmixing.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("fluoscan.cli")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stderr,
        force=True,
    )
    # Library warnings (ConvergenceWarning, DataWarning) become log lines like every other message,
    # without the source line that Python's default format adds.
    logging.captureWarnings(True)
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}"
    # numba (imported by pylablib) logs every compiler pass at debug level.
    logging.getLogger("numba").setLevel(logging.WARNING)
    if not verbose:
        # Third-party libraries speak only when something is wrong.
        for name in ("pyvisa", "asyncio", "numcodecs", "zarr", "matplotlib", "distributed", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)


@app.callback()
def main(
    ctx: typer.Context,
    verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Debug logging, and tracebacks on errors.")] = False,
) -> None:
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose)


def _default_output(config_path: Path) -> Path:
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return Path(f"{config_path.stem}-{stamp}.zarr")


def _unmix_hook(no_unmix: bool, no_report: bool):
    if no_unmix:
        return None

    def unmix_then_report(store: Path) -> None:
        from fluoscan.unmixing import unmix_store

        unmix_store(store)
        if not no_report:
            _write_report(store)

    return unmix_then_report


def _write_report(store: Path) -> None:
    try:
        from fluoscan.cli.report import write_report
    except ImportError as exc:  # matplotlib is optional
        log.warning("no figures written (%s); install fluoscan[report] for figures", exc)
        return
    folder = write_report(store)
    log.info("figures written to %s", folder)


@app.command()
def scan(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Scan configuration (TOML), e.g. config/simulated-mouse.toml.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Store to write (a .zarr folder); default: CONFIG-<UTC time>.zarr.")
    ] = None,
    no_unmix: Annotated[bool, typer.Option("--no-unmix", help="Do not unmix after the scan.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write figures after unmixing.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted scan from its first missing line.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output store.")] = False,
    preview: Annotated[
        int, typer.Option(help="Refresh STORE-preview.png with the lines acquired so far every N lines; 0 turns it off.")
    ] = 0,
    reference: Annotated[
        bool,
        typer.Option(
            "--reference",
            help="Record the reference acquisition (the animal before the markers) into STORE/reference; not unmixed.",
        ),
    ] = False,
) -> None:
    """Acquire a scan (real or simulated devices) into a Zarr store, then unmix it."""
    from fluoscan.acquisition.scan import run_scan

    output = output or _default_output(config)
    with handle_errors(ctx), make_progress() as progress:
        on_line = None
        if preview > 0:
            from fluoscan.cli.report import PreviewWriter

            on_line = PreviewWriter(output, every=preview)
        run_scan(
            config,
            output,
            resume=resume,
            overwrite=overwrite,
            on_complete=_unmix_hook(no_unmix, no_report),
            progress=progress,
            on_line=on_line,
            reference=reference,
        )
    typer.echo(f"{'reference acquisition' if reference else 'scan'} written to {output}")


def _split_names(text: str | None) -> list[str] | None:
    return [name.strip() for name in text.split(",") if name.strip()] if text else None


def _parse_targets(text: str) -> list[float | str | None]:
    targets: list[float | str | None] = []
    for item in text.split(","):
        item = item.strip().lower()
        if item in ("none", ""):
            targets.append(None)
        elif item == "auto":
            targets.append("auto")
        else:
            try:
                targets.append(float(item))
            except ValueError:
                raise typer.BadParameter(f'sparsity target {item!r} is not a number in [0, 1], "none" or "auto"') from None
    return targets


@app.command()
def unmix(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(help="Scan store to unmix.")],
    components: Annotated[
        Optional[str], typer.Option(help="Comma-separated component names; default: the store's configuration.")
    ] = None,
    sparsity: Annotated[
        Optional[str],
        typer.Option(help='Comma-separated sparsity targets in [0, 1], "none" or "auto", one per component.'),
    ] = None,
    max_iter: Annotated[Optional[int], typer.Option(help="Iteration cap.")] = None,
    tol: Annotated[Optional[float], typer.Option(help="Relative loss decrease at which the fit stops.")] = None,
    abundance_start: Annotated[
        Optional[str],
        typer.Option(help='Starting weights: "constant" (the published method) or "lstsq" (least squares on the initial spectra).'),
    ] = None,
    site_background: Annotated[
        Optional[str],
        typer.Option(
            help='Autofluorescence under the markers: "fit" (published method) or "interpolate" (from the tissue around each site).'
        ),
    ] = None,
    sweep: Annotated[
        Optional[str],
        typer.Option(help="Also unmix once per comma-separated sparsity target and store the trends in unmixing/sweep."),
    ] = None,
    swept: Annotated[
        Optional[str], typer.Option(help="Components whose target the sweep varies; default: those with a target.")
    ] = None,
    no_sweep_maps: Annotated[bool, typer.Option("--no-sweep-maps", help="Store only the sweep's curves, not its maps.")] = False,
    dask: Annotated[bool, typer.Option("--dask", help="Read the cube in blocks with Dask, for cubes larger than memory.")] = False,
    scheduler: Annotated[
        Optional[str], typer.Option(help="Dask scheduler address; default: a local cluster on this machine.")
    ] = None,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write figures.")] = False,
) -> None:
    """Unmix an existing store into abundance maps and spectra (written to its unmixing/ group)."""
    from fluoscan.unmixing import sweep_sparsity, unmix_store

    with handle_errors(ctx):
        names = _split_names(components)
        targets = _parse_targets(sparsity) if sparsity else None
        if scheduler and not dask:
            raise typer.BadParameter("--scheduler needs --dask")
        unmix_store(
            store,
            components=names,
            sparsity=targets,
            max_iter=max_iter,
            tol=tol,
            abundance_start=abundance_start,
            backend="dask" if dask else "numpy",
            scheduler=scheduler,
            site_background=site_background,
        )
        if sweep:
            sweep_targets = _parse_targets(sweep)
            if not all(isinstance(target, float) for target in sweep_targets):
                raise typer.BadParameter(f"--sweep takes numbers in [0, 1], got {sweep!r}")
            sweep_sparsity(
                store,
                sweep_targets,
                swept=_split_names(swept),
                components=names,
                max_iter=max_iter,
                tol=tol,
                abundance_start=abundance_start,
                keep_abundance=not no_sweep_maps,
            )
        if not no_report:
            _write_report(store)
    typer.echo(f"unmixing written to {store}/unmixing")


@app.command("import")
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(help="A .mat (MATLAB v5/v7) or .npy file holding a spectral cube.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Store to create.")],
    variable: Annotated[Optional[str], typer.Option(help="Variable holding the cube; default: the largest array.")] = None,
    layout: Annotated[
        str, typer.Option(help='Axis order of the stored array: "y,x,wavelength" (any order) or "wavelength,pixel".')
    ] = "y,x,wavelength",
    image_shape: Annotated[Optional[str], typer.Option(help='Lines,points of the image a pixel axis unrolls, e.g. "95,95".')] = None,
    order: Annotated[str, typer.Option(help='Unrolling order of a pixel axis: "C" (x fastest) or "F" (MATLAB, y fastest).')] = "C",
    wavelengths: Annotated[
        Optional[str], typer.Option(help='First and last wavelength in nm of evenly spaced bands, e.g. "401,889".')
    ] = None,
    wavelength_variable: Annotated[Optional[str], typer.Option(help="Variable holding the wavelengths in nm.")] = None,
    step_mm: Annotated[float, typer.Option(help="Distance between lines, in mm.")] = 1.0,
    reference_spectra: Annotated[
        Optional[str], typer.Option(help="Variable holding reference spectra, stored as truth/spectra.")
    ] = None,
    components: Annotated[
        Optional[str], typer.Option(help="Comma-separated names of the components to unmix, initialised from the data.")
    ] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output store.")] = False,
) -> None:
    """Turn a recorded cube into a scan store that unmix and replay accept."""
    from fluoscan.acquisition.importers import CubeLayout, import_cube

    with handle_errors(ctx):
        shape = tuple(int(value) for value in image_shape.split(",")) if image_shape else None
        cube_layout = CubeLayout(axes=tuple(axis.strip() for axis in layout.split(",")), image_shape=shape, order=order.upper())
        first_last = tuple(float(value) for value in wavelengths.split(",")) if wavelengths else None
        if first_last is not None and len(first_last) != 2:
            raise typer.BadParameter(f"--wavelengths takes FIRST,LAST in nm, got {wavelengths!r}")
        import_cube(
            file,
            output,
            variable=variable,
            layout=cube_layout,
            wavelengths_nm=first_last,
            wavelength_variable=wavelength_variable,
            step_mm=step_mm,
            truth_spectra_variable=reference_spectra,
            components=[name.strip() for name in components.split(",")] if components else None,
            overwrite=overwrite,
        )
    typer.echo(f"imported {file} into {output}")


@app.command()
def replay(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(help="Recorded or imported store to play back.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="New store to write.")],
    no_unmix: Annotated[bool, typer.Option("--no-unmix", help="Do not unmix after the replay.")] = False,
    no_report: Annotated[bool, typer.Option("--no-report", help="Do not write figures after unmixing.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing output store.")] = False,
) -> None:
    """Re-run a recorded scan through simulated devices and the real scan procedure."""
    from fluoscan.acquisition.replay import replay_config
    from fluoscan.acquisition.scan import run_scan

    with handle_errors(ctx), make_progress() as progress:
        config = replay_config(store)
        run_scan(config, output, overwrite=overwrite, on_complete=_unmix_hook(no_unmix, no_report), progress=progress)
    typer.echo(f"replay written to {output}")


@app.command()
def report(
    ctx: typer.Context,
    store: Annotated[Path, typer.Argument(help="Scan store with (or without) an unmixing/ group.")],
    output: Annotated[
        Optional[Path], typer.Option("--output", "-o", help="Folder for the figures; default: STORE-report next to the store.")
    ] = None,
) -> None:
    """Write figures (spectra, abundance maps, residual, loss, sparsity sweep) and an index.html."""
    with handle_errors(ctx):
        from fluoscan.cli.report import write_report

        folder = write_report(store, output)
    typer.echo(f"figures written to {folder}")


def _register_subcommands() -> None:
    from fluoscan.cli import devices

    app.add_typer(devices.app, name="devices")


_register_subcommands()
