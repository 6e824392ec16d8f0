"""The coordinator of a vertical run: holds no data, relays each party's messages to the others.

Every step is one `grid.send_and_receive` round of the message types `common.protocol` lists:
the PSI (records of blinded values only, signed by their senders, with the parties' signed
channel keys), the split, stage 1 labels, stages 2-3 released embeddings, stage 5 test
embeddings, stage 4 and the metrics, in non-private mode the fine-tuning rounds, then the
scoring of `vertical-score-ids`.
Every party-to-party payload but the PSI's messages is sealed end to end between the two
parties (`common.vertical.channel`): the coordinator forwards ciphertext, and reads only sizes,
the customer IDs it asks to score, the ε figures and mechanism parameters, and what the lender
releases to it (its evaluation and scores, each only when the lender's node config allows).
Writes `vertical.json` (metrics per mode and setting, ε per party, mechanisms, sizes, timings)
and `vertical_scores.json` into `out-dir`. An `observer` sees every message relayed (tests check
that none holds a customer ID and that every array is sealed).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid

from common.config import RunConfig
from common.data.scenarios import LENDER, PARTIES, PASSIVE
from common.errors import PartyError
from common.outputs import (
    CUSTOMER_SCORE,
    RESULT_FILE,
    RESULT_METRICS,
    SCORES_FILE,
    write_json,
)
from common.privacy.accounting import SubsampledGaussianEvent
from common.protocol import (
    BOTTOM_SAMPLE_RATE,
    BOTTOM_SIGMA,
    BOTTOM_STEPS,
    CHANNEL,
    CONFIG,
    CUSTOMER,
    DP,
    EMBEDDING_NOISE_MULTIPLIER,
    EPSILON_BUDGET,
    EPSILON_SPENT,
    FIT_TOPS,
    INFO,
    LABEL_NOISE_MULTIPLIER,
    METRICS,
    MODE,
    NON_PRIVATE,
    NUM_ALIGNED,
    NUM_TEST,
    NUM_TRAIN,
    PARTY,
    PSI,
    PSI_ALIGN,
    PSI_FINISH,
    PSI_OPEN,
    PSI_RESPOND,
    PSI_RUN_ID,
    SCORE,
    SEALED,
    STEP,
    STEPS,
    VFL_BOTTOM,
    VFL_EMBED,
    VFL_EVALUATE,
    VFL_FINETUNE,
    VFL_HELLO,
    VFL_LABELS,
    VFL_SCORE,
    VFL_SPLIT,
    VFL_TOP,
    party_record,
    split_setting_metric,
)
from common.vertical.parties import SETTINGS, setting_name
from common.vertical.psi import new_run_id
from common.vertical.releases import gaussian_release_event, plan_mechanisms

log = logging.getLogger(__name__)


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
                raise RuntimeError(
                    f"vertical run needs {len(PARTIES)} parties online, "
                    f"{len(node_ids)} after {wait_seconds:g} s"
                )
            time.sleep(0.5)
        messages = [Message(RecordDict(), dst_node_id=n, message_type=VFL_HELLO) for n in node_ids]
        named = [
            (str(r.content.config_records[INFO][PARTY]), r.metadata.src_node_id)
            for r in self.grid.send_and_receive(messages)
            if not r.has_error()
        ]
        nodes = dict(named)
        if set(nodes) != set(PARTIES) or len(named) != len(nodes):
            raise RuntimeError(
                f"vertical run needs each of the parties {PARTIES} exactly once, "
                f"found {sorted(name for name, _ in named)}"
            )
        return nodes

    def ask(
        self, message_type: str, contents: Mapping[str, RecordDict], refusals_ok: bool = False
    ) -> dict[str, Message]:
        """Send `contents[party]` to each party; their replies by party (errors raise unless
        `refusals_ok`)."""
        messages = []
        for party, content in contents.items():
            self._observe("to", party, message_type, content)
            messages.append(
                Message(content, dst_node_id=self.nodes[party], message_type=message_type)
            )
        party_of = {node: party for party, node in self.nodes.items()}
        replies = {
            party_of[r.metadata.src_node_id]: r for r in self.grid.send_and_receive(messages)
        }
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

    def _observe(self, direction: str, party: str, message_type: str, content: RecordDict) -> None:
        if self.observer is not None:
            self.observer(Relayed(direction, party, message_type, content))


def _config(values: dict[str, Any]) -> RecordDict:
    return RecordDict({CONFIG: ConfigRecord(values)})


def _sealed_to(recipient: str, *sources: Mapping[str, Message]) -> ConfigRecord:
    """The `SEALED` record for `recipient`: what each sender sealed for it in `sources` (replies
    by sender, in the order they were sealed), keyed by sender. Ciphertext only: the coordinator
    forwards blobs it cannot read, alter, redirect or replay."""
    blobs: dict[str, list[bytes]] = {}
    for replies in sources:
        for sender, reply in replies.items():
            sealed = reply.content.config_records[SEALED]
            blobs.setdefault(sender, []).extend(bytes(b) for b in sealed[recipient])
    return ConfigRecord(blobs)


def _with_sealed(
    recipient: str, sources: tuple[Mapping[str, Message], ...], config: dict[str, Any]
) -> RecordDict:
    return RecordDict({SEALED: _sealed_to(recipient, *sources), CONFIG: ConfigRecord(config)})


def run_psi(relay: Relay, run_id: str) -> dict[str, Any]:
    """PSI, channel keys and split through the coordinator: it relays signed blinded records,
    signed ephemeral keys, alignment positions and the sealed split, and learns sizes only."""
    opened = relay.ask(PSI_OPEN, {LENDER: _config({PSI_RUN_ID: run_id})})
    records = opened[LENDER].content.config_records
    replies = relay.ask(
        PSI_RESPOND,
        {
            p: RecordDict({PSI: records[party_record(PSI, p)], CHANNEL: records[CHANNEL]})
            for p in PASSIVE
        },
    )
    keys = ConfigRecord({p: replies[p].content.config_records[CHANNEL][p] for p in PASSIVE})
    finished = relay.ask(
        PSI_FINISH,
        {
            LENDER: RecordDict(
                {
                    **{
                        party_record(PSI, p): replies[p].content.config_records[PSI]
                        for p in PASSIVE
                    },
                    CHANNEL: keys,
                }
            )
        },
    )
    records = finished[LENDER].content.config_records
    relay.ask(PSI_ALIGN, {p: RecordDict({PSI: records[party_record(PSI, p)]}) for p in PASSIVE})
    sizes = relay.ask(
        VFL_SPLIT, {p: RecordDict({SEALED: _sealed_to(p, finished)}) for p in PASSIVE}
    )
    info = sizes[PASSIVE[0]].content.config_records[INFO]
    return {
        "num_aligned": int(records[INFO][NUM_ALIGNED]),
        "num_train": int(info[NUM_TRAIN]),
        "num_test": int(info[NUM_TEST]),
    }


def _flat_metrics(record: MetricRecord) -> dict[str, dict[str, float]]:
    metrics: dict[str, dict[str, float]] = {}
    for key, value in record.items():
        name, metric = split_setting_metric(key)
        metrics.setdefault(name, {})[metric] = float(value)
    return metrics


def run_private(relay: Relay) -> dict[str, Any]:
    """Stages 1-5 of the DP pipeline, each party computing its own part; every array travels
    sealed, the coordinator reads only the ε figures and mechanism parameters."""
    config = {MODE: DP}
    labels = relay.ask(VFL_LABELS, {LENDER: _config(config)})
    bottoms = relay.ask(VFL_BOTTOM, {p: _with_sealed(p, (labels,), config) for p in PASSIVE})
    tests = relay.ask(VFL_EMBED, {p: _config(config) for p in PASSIVE})
    scored = relay.ask(VFL_EVALUATE, {LENDER: _with_sealed(LENDER, (bottoms, tests), config)})
    figures = {p: bottoms[p].content.metric_records[METRICS] for p in PASSIVE}
    lender = labels[LENDER].content.metric_records[METRICS]
    epsilon = {
        LENDER: float(lender[EPSILON_SPENT]),
        **{p: float(figures[p][EPSILON_SPENT]) for p in PASSIVE},
    }
    budgets = {
        LENDER: float(lender[EPSILON_BUDGET]),
        **{p: float(figures[p][EPSILON_BUDGET]) for p in PASSIVE},
    }
    stage2 = {
        p: SubsampledGaussianEvent(
            float(figures[p][BOTTOM_SAMPLE_RATE]),
            float(figures[p][BOTTOM_SIGMA]),
            int(figures[p][BOTTOM_STEPS]),
        )
        for p in PASSIVE
    }
    embeddings = {
        p: gaussian_release_event(float(figures[p][EMBEDDING_NOISE_MULTIPLIER])) for p in PASSIVE
    }
    return {
        RESULT_METRICS: _flat_metrics(scored[LENDER].content.metric_records[METRICS]),
        "epsilon": epsilon,
        "epsilon_budget": budgets,
        "mechanisms": plan_mechanisms(
            gaussian_release_event(float(lender[LABEL_NOISE_MULTIPLIER])), stage2, embeddings
        ),
    }


def run_non_private(relay: Relay) -> dict[str, dict[str, float]]:
    """Stacking with exact embeddings, then full-batch joint fine-tuning step by step: per step
    the passive parties send exact embeddings and the lender sends back exact gradients and the
    next batch's positions, all sealed; the coordinator reads only the number of steps."""
    config = {MODE: NON_PRIVATE}
    labels = relay.ask(VFL_LABELS, {LENDER: _config(config)})
    embedded = relay.ask(VFL_BOTTOM, {p: _with_sealed(p, (labels,), config) for p in PASSIVE})
    step = FIT_TOPS
    while True:  # FIT_TOPS fits the stacked tops; then one fine-tuning step per round pair
        top = relay.ask(
            VFL_TOP, {LENDER: _with_sealed(LENDER, (embedded,), {**config, STEP: step})}
        )
        steps = int(top[LENDER].content.config_records[INFO][STEPS])
        embedded = relay.ask(VFL_FINETUNE, {p: _with_sealed(p, (top,), config) for p in PASSIVE})
        if step + 1 >= steps:
            break
        step += 1
    tests = relay.ask(VFL_EMBED, {p: _config(config) for p in PASSIVE})
    scored = relay.ask(VFL_EVALUATE, {LENDER: _with_sealed(LENDER, (tests,), config)})
    return _flat_metrics(scored[LENDER].content.metric_records[METRICS])


def score_customer(relay: Relay, customer: str, mode: str) -> dict[str, Any]:
    """`query.vfl_score`: each partner seals a voucher for `customer` (alike whether or not it
    knows the customer; it refuses every customer alike when the lender does not score or past
    its `max-vouchers`), the lender scores it (or refuses)."""
    config = {MODE: mode, CUSTOMER: customer}
    answers = relay.ask(VFL_EMBED, {p: _config(config) for p in PASSIVE}, refusals_ok=True)
    refused = {p: r.error.reason for p, r in answers.items() if r.has_error()}
    if refused:
        return {
            "error": "; ".join(f"{p}: {reason}" for p, reason in sorted(refused.items())),
            "refused_by": sorted(refused),
        }
    content = _with_sealed(LENDER, (answers,), config)
    reply = relay.ask(VFL_SCORE, {LENDER: content}, refusals_ok=True)[LENDER]
    if reply.has_error():
        return {"error": f"{LENDER}: {reply.error.reason}", "refused_by": [LENDER]}
    return {CUSTOMER_SCORE: float(reply.content.metric_records[METRICS][SCORE])}


def distinct_customers(customers: list[str]) -> list[str]:
    """`customers` in order, each once: a repeated ID is asked once (the lender scores a
    customer once per run) and logged, so no answer in vertical_scores.json overwrites another."""
    distinct = list(dict.fromkeys(customers))
    if len(distinct) < len(customers):
        repeated = sorted({c for c in distinct if customers.count(c) > 1})
        log.warning("vertical-score-ids repeats %s: each is scored once", ", ".join(repeated))
    return distinct


def _summary_name(mode: str) -> str:
    """How vertical.json names a mode: `dp`, `non_private`."""
    return mode.replace("-", "_")


def run_vertical(
    grid: Grid, run: RunConfig, run_id: str = "", observer: Observer | None = None
) -> dict[str, Any]:
    """The whole vertical run through Flower; writes and returns the result summary."""
    started = time.perf_counter()
    timings: dict[str, float] = {}
    relay = Relay(grid, run, observer)
    psi_run_id = new_run_id()
    t0 = time.perf_counter()
    summary: dict[str, Any] = {
        "run_id": run_id,
        "psi_run_id": psi_run_id,
        "seed": run.seed,
        **run_psi(relay, psi_run_id),
        RESULT_METRICS: {},
    }
    timings["psi_seconds"] = time.perf_counter() - t0
    modes = ([DP] if run.sim_dp else []) + (
        [NON_PRIVATE] if run.vertical_non_private or not run.sim_dp else []
    )
    for mode in modes:
        t0 = time.perf_counter()
        if mode == DP:
            private = run_private(relay)
            summary[RESULT_METRICS][_summary_name(mode)] = private.pop(RESULT_METRICS)
            summary.update(private)
        else:
            summary[RESULT_METRICS][_summary_name(mode)] = run_non_private(relay)
        timings[f"{_summary_name(mode)}_seconds"] = time.perf_counter() - t0
    scores = {c: score_customer(relay, c, modes[0]) for c in distinct_customers(run.score_ids)}
    summary.update(
        timings=timings,
        message_rounds=relay.rounds,
        wall_seconds=time.perf_counter() - started,
        scored_with=modes[0],
        settings=[setting_name(s) for s in SETTINGS],
    )
    out_dir = Path(run.out_dir)
    write_json(out_dir / RESULT_FILE, summary)
    if scores:
        write_json(out_dir / SCORES_FILE, scores)
    log.info(
        "vertical run done in %.1f s (%d message rounds)", summary["wall_seconds"], relay.rounds
    )
    return summary
