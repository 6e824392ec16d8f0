"""Flower's in-process Simulation Engine, as every simulated federation here runs it."""

from __future__ import annotations

import os
from typing import Any


def run_in_simulation_engine(server_app: Any, client_app: Any, num_supernodes: int) -> None:
    """Flower's in-process Simulation Engine, one CPU per ClientApp, quiet, no telemetry."""
    from flwr.simulation import run_simulation

    for key, value in (("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0"),
                       ("FLWR_TELEMETRY_ENABLED", "0"), ("RAY_USAGE_STATS_ENABLED", "0")):
        os.environ.setdefault(key, value)
    run_simulation(
        server_app=server_app, client_app=client_app, num_supernodes=num_supernodes,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                        "init_args": {"logging_level": "ERROR", "log_to_driver": False}})
