"""Command-line options that several ``geoseg`` commands share: flags and help text defined once.

Each is an ``Annotated`` alias for a Typer parameter; the default stays on the parameter
(``device: Device = "auto"``) and equals the stage config's field default, which
``tests/unit/test_config.py`` checks for every command. Only Typer is imported here, so
``geoseg --help`` and usage errors stay fast.
"""

from __future__ import annotations

from typing import Annotated

import typer

ASSET_HELP = "STAC Item asset to read (default: the first image asset: role data, GeoTIFF media type)."
REGULARIZE_HELP = "Class name(s) whose polygons get regular footprints (straight edges, right angles), e.g. building."
_FROM_MODEL = "default: the model's calibrated value, else derived from its label objects"

Asset = Annotated[str | None, typer.Option(help=ASSET_HELP)]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N.")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars on stderr.")]
Scheduler = Annotated[
    str | None,
    typer.Option(help="Existing dask scheduler address, e.g. tcp://host:8786 (its workers must see the same paths)."),
]
Workers = Annotated[
    int,
    typer.Option(
        help="Tasks in parallel: 1 = in-process (default); N > 1 = a local dask cluster of N single-thread "
        "workers (geoseg.parallel)."
    ),
]
Seed = Annotated[int, typer.Option(help="Random seed (same seed, same result).")]

# post-processing of the instance polygons (predict and vectorize)
Threshold = Annotated[
    float | None, typer.Option(help=f"Minimum class probability of an instance pixel ({_FROM_MODEL}, else 0.5).")
]
MinArea = Annotated[
    float | None, typer.Option("--min-area", help=f"Drop instances smaller than this, m² ({_FROM_MODEL}).")
]
FillHoles = Annotated[
    float | None,
    typer.Option("--fill-holes", help=f"Fill holes smaller than this inside instances, m² ({_FROM_MODEL})."),
]
CoreBoundaryMax = Annotated[
    float | None,
    typer.Option(
        "--core-boundary-max",
        help="Boundary probability below which a pixel is an object core that separates touching "
        f"objects ({_FROM_MODEL}, else 0.1).",
    ),
]
Regularize = Annotated[str | None, typer.Option(help=REGULARIZE_HELP, metavar="NAME[,NAME]")]
