"""A vertical run driven in this process: the real ServerApp relay and the real party ClientApps,
connected by `VerticalGrid` (Flower's wire format, no Simulation Engine), every message kept.

`shared_vertical_run()` runs one (DP, non-private with 2 fine-tuning steps, scoring) and caches
it per test process, so the coordinator's and the parties' tests share it (about 10 s).
"""

from __future__ import annotations

import atexit
import copy
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run

from clients.app import build_client_app
from clients.vertical.registry import handle
from common.config import RunConfig
from common.data.scenarios import LENDER, PARTIES
from common.outputs import LEDGER_DIR
from common.protocol import CHANNEL_STATE, CONFIG, SEALED
from common.vertical.channel import Channels
from common.vertical.parties import load_party, split_aligned, split_seed
from server.vertical import Relayed, run_vertical
from simulations.simulate.horizontal import create_run_keys
from tests.common.vertical.own_tables import ID_COLUMNS, OwnTables
from tests.flower_helpers import set_task_identity


class VerticalGrid(Grid):
    """Delivers each message to its party's ClientApp in this process, as Flower serializes it;
    keeps every message the coordinator pushed and every reply it pulled."""

    def __init__(
        self,
        run: RunConfig,
        node_config: dict[str, Any] | None = None,
        party_configs: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """`node_config` goes to every party's node config, `party_configs[party]` to that
        party's only (a deployed party's: `partner` and its own keys)."""
        self.client_app = build_client_app(run.to_flower())
        self.contexts = {
            100 + i: Context(
                run_id=1,
                node_id=100 + i,
                node_config={
                    "partition-id": i,
                    "num-partitions": len(PARTIES),
                    **(node_config or {}),
                    **(party_configs or {}).get(party, {}),
                },
                state=RecordDict(),
                run_config=run.to_flower(),
            )
            for i, party in enumerate(PARTIES)
        }
        self.pushed: list[Message] = []
        self.pulled: list[Message] = []
        self._replies: dict[str, Message] = {}
        self._run = Run.create_empty(1)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(
            content=content,
            dst_node_id=dst_node_id,
            message_type=message_type,
            group_id=group_id,
            ttl=ttl,
        )

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            delivered = message_from_proto(message_to_proto(msg))
            self.pushed.append(delivered)
            context = self.contexts[msg.metadata.dst_node_id]
            try:
                reply = self.client_app(delivered, context)
            except Exception as exc:  # noqa: BLE001 - reported as Flower does
                reply = Message(
                    Error(code=2, reason=f"{type(exc).__name__}: {exc}"), reply_to=delivered
                )
            ids.append(uuid.uuid4().hex)
            self._replies[ids[-1]] = message_from_proto(message_to_proto(reply))
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = [self._replies.pop(i) for i in message_ids]
        self.pulled.extend(replies)
        return replies

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))

    def context_of(self, party: str) -> Context:
        """A copy of `party`'s Context as the run left it (tests may change the copy)."""
        return copy.deepcopy(self.contexts[100 + PARTIES.index(party)])

    def seal_as(
        self,
        sender: str,
        recipient: str,
        arrays: dict[str, np.ndarray | str],
        *,
        stage: str,
        mode: str,
    ) -> bytes:
        """A payload sealed with `sender`'s own channel (what that party, honest or not, could
        send); its counter moves on as if it had sent it."""
        state = self.contexts[100 + PARTIES.index(sender)].state
        channels = Channels.from_state(dict(state.config_records[CHANNEL_STATE]))
        sealed = channels.seal_arrays(recipient, arrays, stage=stage, mode=mode)
        state[CHANNEL_STATE] = ConfigRecord(channels.to_state())
        return sealed


def deliver(
    context: Context,
    message_type: str,
    config: dict[str, Any],
    sealed: dict[str, list[bytes]] | None = None,
    records: dict[str, Any] | None = None,
) -> Message:
    """A coordinator's message to the party of `context`, answered by its real handler."""
    set_task_identity()
    content = RecordDict({CONFIG: ConfigRecord(config), **(records or {})})
    if sealed is not None:
        content[SEALED] = ConfigRecord(sealed)
    msg = Message(content=content, dst_node_id=context.node_id, message_type=message_type)
    return handle(message_from_proto(message_to_proto(msg)), context, {})


@dataclass
class VerticalRun:
    """What an in-process vertical run left: its config, grid, summary and relayed messages."""

    run: RunConfig
    grid: VerticalGrid
    summary: dict[str, Any]
    relayed: list[Relayed] = field(default_factory=list)


def keyed_run_config(out: Path, **overrides: Any) -> RunConfig:
    """A vertical run config with fresh party keys and ledgers under `out`."""
    create_run_keys(out / "keys", list(PARTIES))
    return RunConfig(
        mode="vertical",
        out_dir=str(out / "run"),
        sim_keys_dir=str(out / "keys"),
        sim_ledger_dir=str(out / LEDGER_DIR),
        **overrides,
    )


def run_in_process(
    run: RunConfig,
    node_config: dict[str, Any] | None = None,
    grid_class: type[VerticalGrid] = VerticalGrid,
    party_configs: dict[str, dict[str, Any]] | None = None,
) -> VerticalRun:
    """The whole vertical run of `run` through a `grid_class` grid."""
    set_task_identity()
    grid = grid_class(run, node_config, party_configs)
    result = VerticalRun(run, grid, {})
    result.summary = run_vertical(grid, run, "test-run", result.relayed.append)
    return result


def aligned_customers(seed: int, test_fraction: float = 0.25) -> tuple[list[str], list[str]]:
    """(training customers, test customers) of the run's alignment, as the lender splits it."""
    lender = load_party(LENDER, seed)
    common = set(load_party("bank", seed).ids) & set(load_party("ecommerce", seed).ids)
    aligned = [i for i, c in enumerate(lender.ids) if c in common]
    train, test = split_aligned(len(aligned), test_fraction=test_fraction, seed=split_seed(seed))
    return (
        [lender.ids[aligned[int(i)]] for i in train],
        [lender.ids[aligned[int(i)]] for i in test],
    )


@cache
def shared_vertical_run() -> VerticalRun:
    """One DP + non-private run (2 fine-tuning steps) that scores a test customer (named twice
    in `vertical-score-ids`), a training customer and an unknown one; cached per test
    process."""
    training, test = (customers[0] for customers in aligned_customers(0))
    out = Path(tempfile.mkdtemp(prefix="fedcredit-vertical-"))
    atexit.register(shutil.rmtree, out, ignore_errors=True)
    run = keyed_run_config(
        out,
        seed=0,
        vertical_non_private=True,
        vertical_finetune_steps=2,
        vertical_score_ids=f"{test},{training},cust-x,{test}",
    )
    return run_in_process(run)


def deployed_party_configs(
    tables: OwnTables, out: Path, **lender: Any
) -> dict[str, dict[str, Any]]:
    """Each party's node config as its own SuperNode would set it (deployed: `partner`, its
    budget, its own table, ledger and keys under `out`), the lender's with `lender` added."""
    keys = out / "keys"
    if not (keys / f"{LENDER}.key").exists():
        create_run_keys(keys, list(PARTIES))
    (out / LEDGER_DIR).mkdir(parents=True, exist_ok=True)
    return {
        party: {
            "partner": party,
            "epsilon": 3.0,
            "delta": 1e-5,
            "data-path": str(tables.csv(party)),
            "schema-path": str(tables.schema(party)),
            "id-column": ID_COLUMNS[party],
            "ledger-path": str(out / LEDGER_DIR / f"{party}.jsonl"),
            "signing-key": str(keys / f"{party}.key"),
            "federation-keys": str(keys),
            **(lender if party == LENDER else {}),
        }
        for party in PARTIES
    }
