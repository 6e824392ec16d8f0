"""A partner's settings, read once per message from its Flower Context into validated types."""

from __future__ import annotations

from flwr.app import Context

from common.config import PartnerConfig, RunConfig


def read_run_config(context: Context, overrides: dict) -> RunConfig:
    """The run config Flower passes, with `overrides` (simulation only) applied, validated."""
    return RunConfig.from_flower({**dict(context.run_config), **overrides})


def read_config(context: Context, overrides: dict) -> tuple[RunConfig, PartnerConfig]:
    """The run config and this node's partner (its partition id in simulation, its node config
    `partner` when deployed). Every handler calls this first, then passes plain values down."""
    import torch  # here, not at import: a SecAgg+ stage that does not train never needs it

    torch.set_num_threads(1)  # partners train side by side: one thread each
    run = read_run_config(context, overrides)
    return run, PartnerConfig.from_node_config(dict(context.node_config), run)
