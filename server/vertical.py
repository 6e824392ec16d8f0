"""The coordinator of a vertical run: holds no data, relays each party's messages to the others.

Every step is one `grid.send_and_receive` round of the message types `clients.vertical` lists:
the PSI (records of blinded values only), the split (positions), stage 1 labels, stages 2-3
released embeddings, stage 5 test embeddings, stage 4 and the metrics (only metrics come back),
in non-private mode the fine-tuning rounds, then the scoring of `vertical-score-ids`. Writes
`vertical.json` (metrics per mode and setting, ε per party, mechanisms, sizes, timings) and
`vertical_scores.json` into `out-dir`. An `observer` sees every message relayed (tests check
that none holds a customer ID).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data.scenarios import LENDER, PARTIES, PASSIVE
from common.errors import PartyError
from common.outputs import write_json
from common.vertical.parties import SETTINGS, setting_name
from common.vertical.psi import new_run_id
from common.vertical.releases import BottomPlan, plan_mechanisms

log = logging.getLogger(__name__)
RESULT_FILE, SCORES_FILE = "vertical.json", "vertical_scores.json"
DP, NON_PRIVATE = "dp", "non-private"


@dataclass(frozen=True)
class Relayed:
    """One message the coordinator relayed: to or from `party`, of `message_type`."""

    direction: str
    party: str
    message_type: str
    content: RecordDict


Observer = Callable[[Relayed], None]



class Relay:
    """Sends messages to parties by name and returns their replies by name."""

    def __init__(self, grid: Grid, run: RunConfig, observer: Observer | None = None) -> None:
        self.grid, self.observer, self.rounds = grid, observer, 0
        self.nodes = self._discover(run.wait_for_partners)

    def _discover(self, wait_seconds: float) -> dict[str, int]:
        deadline = time.monotonic() + wait_seconds
        while len(node_ids := list(self.grid.get_node_ids())) < len(PARTIES):
            if time.monotonic() > deadline:
                raise RuntimeError(f"vertical run needs {len(PARTIES)} parties online, "
                                   f"{len(node_ids)} after {wait_seconds:g} s")
            time.sleep(0.5)
        messages = [Message(RecordDict(), dst_node_id=n, message_type="query.vfl_hello")
                    for n in node_ids]
        named = [(str(r.content.config_records["info"]["party"]), r.metadata.src_node_id)
                 for r in self.grid.send_and_receive(messages) if not r.has_error()]
        nodes = dict(named)
        if set(nodes) != set(PARTIES) or len(named) != len(nodes):
            raise RuntimeError(f"vertical run needs each of the parties {PARTIES} exactly once, "
                               f"found {sorted(name for name, _ in named)}")
        return nodes

    def ask(self, message_type: str, contents: Mapping[str, RecordDict],
            refusals_ok: bool = False) -> dict[str, Message]:
        """Send `contents[party]` to each party; their replies by party (errors raise unless
        `refusals_ok`)."""
        messages = []
        for party, content in contents.items():
            self._observe("to", party, message_type, content)
            messages.append(Message(content, dst_node_id=self.nodes[party],
                                    message_type=message_type))
        party_of = {node: party for party, node in self.nodes.items()}
        replies = {party_of[r.metadata.src_node_id]: r
                   for r in self.grid.send_and_receive(messages)}
        self.rounds += 1
        for party, reply in replies.items():
            if reply.has_error():
                if not refusals_ok:
                    raise PartyError(party, reply.error.reason)
            else:
                self._observe("from", party, message_type, reply.content)
        missing = set(contents) - set(replies)
        if missing:
            raise RuntimeError(f"no reply to {message_type} from {sorted(missing)}")
        return replies

    def _observe(self, direction: str, party: str, message_type: str,
                 content: RecordDict) -> None:
        if self.observer is not None:
            self.observer(Relayed(direction, party, message_type, content))


def _config(**values: Any) -> RecordDict:
    return RecordDict({"config": ConfigRecord(values)})


def _passives(replies: Mapping[str, Message], record: str) -> dict[str, ArrayRecord]:
    return {p: replies[p].content.array_records[record] for p in PASSIVE}


def run_psi(relay: Relay, run_id: str) -> dict[str, Any]:
    """PSI and split through the coordinator: it relays blinded records and positions only."""
    opened = relay.ask("query.psi_open", {LENDER: _config(**{"psi-run-id": run_id})})
    records = opened[LENDER].content.config_records
    replies = relay.ask("query.psi_respond", {p: RecordDict({"psi": records[f"psi.{p}"]})
                                              for p in PASSIVE})
    finished = relay.ask("query.psi_finish", {LENDER: RecordDict({
        f"psi.{p}": replies[p].content.config_records["psi"] for p in PASSIVE})})
    records = finished[LENDER].content.config_records
    relay.ask("query.psi_align", {p: RecordDict({"psi": records[f"psi.{p}"]}) for p in PASSIVE})
    split = records["split"]
    sizes = relay.ask("query.vfl_split", {p: RecordDict({"config": split}) for p in PASSIVE})
    info = sizes[PASSIVE[0]].content.config_records["info"]
    return {"num_aligned": int(split["num-aligned"]), "num_train": int(info["num-train"]),
            "num_test": int(info["num-test"])}


def _flat_metrics(record: MetricRecord) -> dict[str, dict[str, float]]:
    metrics: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        name, metric = key.rsplit("/", 1)
        metrics.setdefault(name, {})[metric] = float(value)
    return metrics


def run_private(relay: Relay) -> dict[str, Any]:
    """Stages 1-5 of the DP pipeline, each party computing its own part."""
    labels = relay.ask("query.vfl_labels", {LENDER: _config(mode=DP)})[LENDER].content
    bottoms = relay.ask("train.vfl_bottom", {p: RecordDict({
        "labels": labels.array_records["labels"], "config": ConfigRecord({"mode": DP})})
        for p in PASSIVE})
    tests = relay.ask("query.vfl_embed", {p: _config(mode=DP) for p in PASSIVE})
    figures = {p: bottoms[p].content.metric_records["metrics"] for p in PASSIVE}
    content = RecordDict({
        **{f"train.{p}": a for p, a in _passives(bottoms, "embeddings").items()},
        **{f"test.{p}": a for p, a in _passives(tests, "embeddings").items()},
        "noise-std": MetricRecord({p: float(figures[p]["noise-std"]) for p in PASSIVE}),
        "config": ConfigRecord({"mode": DP})})
    scored = relay.ask("evaluate.vfl_score", {LENDER: content})[LENDER]
    lender = labels.metric_records["metrics"]
    epsilon = {LENDER: float(lender["epsilon-spent"]),
               **{p: float(figures[p]["epsilon-spent"]) for p in PASSIVE}}
    budgets = {LENDER: float(lender["epsilon-budget"]),
               **{p: float(figures[p]["epsilon-budget"]) for p in PASSIVE}}
    plans = {p: BottomPlan(float(figures[p]["bottom-sample-rate"]),
                           float(figures[p]["bottom-sigma"]), int(figures[p]["bottom-steps"]),
                           float(figures[p]["embedding-noise-multiplier"])) for p in PASSIVE}
    return {"metrics": _flat_metrics(scored.content.metric_records["metrics"]),
            "epsilon": epsilon, "epsilon_budget": budgets,
            "mechanisms": plan_mechanisms(float(lender["label-noise-multiplier"]), plans)}


def run_non_private(relay: Relay) -> dict[str, dict[str, float]]:
    """Stacking with exact embeddings, then full-batch joint fine-tuning step by step: per step
    the passive parties send exact embeddings and the lender sends back exact gradients."""
    labels = relay.ask("query.vfl_labels", {LENDER: _config(mode=NON_PRIVATE)})[LENDER].content
    bottoms = relay.ask("train.vfl_bottom", {p: RecordDict({
        "labels": labels.array_records["labels"], "config": ConfigRecord({"mode": NON_PRIVATE})})
        for p in PASSIVE})
    embeddings = _passives(bottoms, "embeddings")
    step, previous = -1, None
    while True:  # step -1 fits the stacked tops; then one fine-tuning step per round pair
        content = RecordDict({**embeddings, "config": ConfigRecord({"mode": NON_PRIVATE,
                                                                     "step": step})})
        reply = relay.ask("train.vfl_top", {LENDER: content})[LENDER].content
        info = reply.config_records["info"]
        config: dict[str, Any] = {"mode": NON_PRIVATE}
        if previous is not None:
            config["previous-batch"] = previous  # the batch these gradients are for
        if "batch" in info:
            config["batch"] = list(info["batch"])
        tuned = relay.ask("train.vfl_finetune", {p: RecordDict({
            "grads": reply.array_records.get(f"grads.{p}", ArrayRecord()),
            "config": ConfigRecord(config)}) for p in PASSIVE})
        if "batch" not in info:
            break
        embeddings, previous, step = _passives(tuned, "embeddings"), config["batch"], step + 1
    tests = relay.ask("query.vfl_embed", {p: _config(mode=NON_PRIVATE) for p in PASSIVE})
    content = RecordDict({**{f"test.{p}": a for p, a in _passives(tests, "embeddings").items()},
                          "config": ConfigRecord({"mode": NON_PRIVATE})})
    scored = relay.ask("evaluate.vfl_score", {LENDER: content})[LENDER]
    return _flat_metrics(scored.content.metric_records["metrics"])


def score_customer(relay: Relay, customer: str, mode: str) -> dict[str, Any]:
    """`query.vfl_score`: each partner embeds `customer` (or refuses), the lender scores it."""
    config = {"mode": mode, "customer": customer}
    answers = relay.ask("query.vfl_embed", {p: _config(**config) for p in PASSIVE},
                        refusals_ok=True)
    refused = {p: r.error.reason for p, r in answers.items() if r.has_error()}
    if refused:
        return {"error": "; ".join(f"{p}: {reason}" for p, reason in sorted(refused.items())),
                "refused_by": sorted(refused)}
    content = RecordDict({**{f"customer.{p}": answers[p].content.array_records["embeddings"]
                             for p in PASSIVE}, "config": ConfigRecord(config)})
    reply = relay.ask("query.vfl_score", {LENDER: content}, refusals_ok=True)[LENDER]
    if reply.has_error():
        return {"error": f"{LENDER}: {reply.error.reason}", "refused_by": [LENDER]}
    return {"score": float(reply.content.metric_records["metrics"]["score"])}


def run_vertical(grid: Grid, run: RunConfig, run_id: str = "",
                 observer: Observer | None = None) -> dict[str, Any]:
    """The whole vertical run through Flower; writes and returns the result summary."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    relay = Relay(grid, run, observer)
    psi_run_id = new_run_id()
    t0 = time.perf_counter()
    summary: dict[str, Any] = {"run_id": run_id, "psi_run_id": psi_run_id, "seed": run.seed,
                               **run_psi(relay, psi_run_id), "metrics": {}}
    timings["psi_seconds"] = time.perf_counter() - t0
    modes = ([DP] if run.sim_dp else []) + (
        [NON_PRIVATE] if run.vertical_non_private or not run.sim_dp else [])
    for mode in modes:
        t0 = time.perf_counter()
        if mode == DP:
            private = run_private(relay)
            summary["metrics"]["dp"] = private.pop("metrics")
            summary.update(private)
        else:
            summary["metrics"]["non_private"] = run_non_private(relay)
        timings[f"{mode.replace('-', '_')}_seconds"] = time.perf_counter() - t0
    scores = {c: score_customer(relay, c, modes[0]) for c in run.score_ids}
    summary.update(timings=timings, message_rounds=relay.rounds,
                   wall_seconds=time.perf_counter() - started, scored_with=modes[0],
                   settings=[setting_name(s) for s in SETTINGS])
    out_dir = Path(run.out_dir)
    write_json(out_dir / RESULT_FILE, summary)
    if scores:
        write_json(out_dir / SCORES_FILE, scores)
    log.info("vertical run done in %.1f s (%d message rounds)", summary["wall_seconds"],
             relay.rounds)
    return summary

