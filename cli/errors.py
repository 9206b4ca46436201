"""Turn exceptions into one line on stderr and the exit status the command line contract gives."""

from __future__ import annotations

import contextlib
import logging
import signal
import traceback
from collections.abc import Iterator

import typer

from fluoscan.acquisition.config import ConfigError
from fluoscan.acquisition.importers import ImportFileError
from fluoscan.acquisition.scan import ScanAborted
from fluoscan.acquisition.store import StoreError
from fluoscan.acquisition.writer import WriterError
from fluoscan.drivers import DeviceError

log = logging.getLogger("fluoscan.cli")

EXPECTED = (ConfigError, StoreError, DeviceError, WriterError, ImportFileError, ValueError, OSError)


def _fail(message: str, code: int, verbose: bool) -> None:
    if verbose:
        traceback.print_exc()
    typer.secho(f"error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


@contextlib.contextmanager
def handle_errors(ctx: typer.Context) -> Iterator[None]:
    """Run a command body; report an error in one line and exit with its status.

    Exit statuses: 1 for errors, 130 for Ctrl-C (SIGINT), 143 for SIGTERM.
    """
    verbose = bool(ctx.obj and ctx.obj.get("verbose"))
    try:
        yield
    except (typer.Exit, typer.Abort, typer.BadParameter):
        raise
    except ScanAborted as exc:
        _fail(f"{exc}; the laser is off and finished lines are kept (continue with --resume)", 128 + exc.signal_number, verbose)
    except KeyboardInterrupt:
        _fail("interrupted", 128 + signal.SIGINT, verbose)
    except EXPECTED as exc:
        _fail(str(exc), 1, verbose)
    except Exception as exc:
        _fail(f"unexpected {type(exc).__name__}: {exc} (run with -v for the traceback)", 1, verbose)
