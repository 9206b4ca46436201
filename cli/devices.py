"""``fluoscan devices``: serve the simulated devices, and check the devices a configuration names."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
