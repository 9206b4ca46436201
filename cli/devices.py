"""``fluoscan devices``: serve the simulated devices, and check the devices a configuration names."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated, Optional

import typer

from fluoscan.cli.errors import handle_errors

app = typer.Typer(help="Serve simulated devices, or check real ones.", no_args_is_help=True)


@app.command()
def check(
    ctx: typer.Context,
    config: Annotated[Path, typer.Argument(help="Scan configuration (TOML) naming the devices.")],
) -> None:
    """Connect to every device of a configuration and print identities and status; nothing emits or moves."""
    from fluoscan.acquisition.config import load_config
    from fluoscan.acquisition.devices import open_devices

    with handle_errors(ctx):
        settings = load_config(config)
        with open_devices(settings) as devices:
            laser, stage, camera = devices.laser, devices.stage, devices.spectrometer
            low_mw, high_mw = laser.power_limits_mw()
            typer.echo(f"laser         {laser.identity()}")
            typer.echo(
                f"              wavelength {laser.wavelength_nm():g} nm, power range {low_mw:g}..{high_mw:g} mW, "
                f"emission {'ON' if laser.emission() else 'off'}, interlock {'closed' if laser.interlock_closed() else 'OPEN'}"
            )
            low_mm, high_mm = stage.limits_mm()
            typer.echo(f"stage         {stage.identity()}")
            typer.echo(
                f"              position {stage.position_mm():.4f} mm, travel {low_mm:g}..{high_mm:g} mm, "
                f"{'homed' if stage.is_homed() else 'NOT homed'}"
            )
            wavelengths = camera.wavelengths_nm()
            n_points, n_wavelengths = camera.frame_shape()
            typer.echo(f"spectrometer  {camera.identity()}")
            typer.echo(
                f"              frame {n_points} points x {n_wavelengths} wavelengths, "
                f"{wavelengths.min():.1f}..{wavelengths.max():.1f} nm, sensor {camera.temperature_c():.1f} °C"
            )


@app.command()
def simulate(
    ctx: typer.Context,
    config: Annotated[
        Optional[Path], typer.Argument(help="Configuration whose laser, stage and simulation settings to serve; default: built-in defaults.")
    ] = None,
    laser_port: Annotated[int, typer.Option(help="TCP port for the laser on 127.0.0.1; 0 picks a free one.")] = 0,
    laser_pty: Annotated[bool, typer.Option("--laser-pty", help="Serve the laser on a pseudo-terminal instead of TCP.")] = False,
    stage_link: Annotated[
        Optional[Path], typer.Option(help="Also make this path a link to the stage's pseudo-terminal, a stable name to configure.")
    ] = None,
) -> None:
    """Serve the simulated laser and stage until Ctrl-C, for scans or people in other processes.

    Prints "laser <VISA resource>" and "stage <serial port>" as soon as each serves. Point a
    configuration at them with laser.driver = "obis", laser.resource = <VISA resource>,
    stage.driver = "zaber" and stage.port = <serial port>.
    """
    from fluoscan.acquisition.config import FluoscanConfig, load_config
    from fluoscan.simulators.laser import LaserTransport, serve_laser
    from fluoscan.simulators.stage import serve_stage

    with handle_errors(ctx):
        settings = load_config(config) if config is not None else FluoscanConfig()
        transport = LaserTransport.PTY if laser_pty else LaserTransport.TCP
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop.set())
        with serve_laser(settings, transport=transport, port=laser_port) as laser:
            typer.echo(f"laser {laser.resource}")
            with serve_stage(settings, link_path=stage_link) as stage:
                typer.echo(f"stage {stage_link or stage.port}")
                typer.echo("serving until Ctrl-C", err=True)
                stop.wait()
        typer.echo("stopped", err=True)
