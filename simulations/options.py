"""Command-line options shared by several `fedcredit` commands."""

from __future__ import annotations

from typing import Annotated

import typer

EpsilonOpt = Annotated[float, typer.Option(help="Privacy budget epsilon of every partner.")]
DeltaOpt = Annotated[float, typer.Option(help="Privacy budget delta of every partner.")]
RoundsOpt = Annotated[int, typer.Option(help="Federated rounds (num-server-rounds).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of splits, initialisation, sampling, noise.")]
