"""The ``geoseg`` command line: parse, validate, call the stage's ``run``. Nothing else.

Every :class:`~geoseg.errors.GeosegError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from geoseg import __version__
from geoseg.errors import GeosegError
from geoseg.io.gdal_env import gdal_env

app = typer.Typer(
    name="geoseg",
    help="Geospatial segmentation: tile scenes + dated labels, train a UNet, predict COGs + polygons.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"geoseg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for noisy in ("rasterio", "fiona", "pyogrio", "distributed", "matplotlib", "PIL", "numba", "timm"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- stage commands (each helper owns its block; keep the markers) ------------------------------
# >>> tile
# <<< tile
# >>> train
# <<< train
# >>> predict
# <<< predict
# >>> vectorize
# <<< vectorize
# >>> evaluate
# <<< evaluate
# >>> run
# <<< run


def main(argv: list[str] | None = None) -> int:
    """Console-script entry: GDAL env set once, ``GeosegError`` -> one line + exit 2."""
    try:
        with gdal_env():
            app(args=argv, standalone_mode=False)
    except GeosegError as e:
        typer.echo(f"geoseg: error: {e}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        typer.echo("geoseg: interrupted", err=True)
        return 130
    except typer.Exit as e:
        return int(e.exit_code or 0)
    except typer.Abort:
        return 1
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.exceptions.UsageError):
            e.show()
            return 2
        if isinstance(e, click.exceptions.ClickException):
            e.show()
            return e.exit_code
        raise
    return 0


# typer's Optional/Path in annotations must stay importable for the blocks above
_ = (Optional, Path)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
