"""The whole vertical run in one process: every party's stages called in turn, every array that
crosses a party boundary recorded in a `Transcript` (the reference that the Flower transport,
`clients.vertical` and `server.vertical`, is checked against; simulation and tests only)."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from common.data.scenarios import LENDER, PARTIES, PASSIVE
from common.data.vertical_spec import VerticalSpec
from common.learning.metrics import credit_metrics
from common.learning.training import TrainSettings
from common.outputs import ledger_file
from common.vertical.finetune import FinetuneBottom, FinetuneTop, finetune_batches
from common.vertical.parties import (
    SETTINGS,
    VerticalScenario,
    load_vertical_scenario,
    passives_of,
    setting_name,
)
from common.vertical.releases import (
    Release,
    lender_release,
    plan_mechanisms,
    releases_epsilon,
    write_ledger,
)
from common.vertical.settings import VerticalSettings, non_private_seeds
from common.vertical.stages import (
    TopModel,
    exact_embeddings,
    fit_private_tops,
    fit_top,
    non_private_bottom,
    passive_release,
    scoring_embeddings,
    setting_metrics,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Message:
    """One array that crossed a party boundary."""

    stage: str
    sender: str
    recipient: str
    kind: str
    payload: np.ndarray


@dataclass
class Transcript:
    """Every array sent between parties, in order (what the tests inspect)."""

    messages: list[Message] = field(default_factory=list)

    def send(self, stage: str, sender: str, recipient: str, kind: str,
             payload: np.ndarray) -> np.ndarray:
        """Record `payload` going from `sender` to `recipient`; returns a copy, as received."""
        received = np.array(payload, dtype=np.float64, copy=True)
        self.messages.append(Message(stage, sender, recipient, kind, received))
        return received.copy()


def joint_finetune(top: TopModel, bottoms: Mapping[str, nn.Module], own: np.ndarray,
                   features: Mapping[str, np.ndarray], labels: np.ndarray, *,
                   settings: TrainSettings, seed: int,
                   transcript: Transcript | None = None) -> TopModel:
    """Non-private split learning: exact embeddings forward, exact gradients back, per batch.

    Passive parties update their bottoms in place; returns the lender's updated top model.
    """
    parties = list(bottoms)
    lender = FinetuneTop(top, settings)
    tuners = {p: FinetuneBottom(bottoms[p], settings) for p in parties}
    for batch in finetune_batches(len(labels), settings, seed):
        received = []
        for p in parties:  # passive side: forward its bottom, send the embeddings
            sent = tuners[p].forward(features[p][batch])
            if transcript is not None:
                sent = transcript.send("finetune", p, LENDER, "embeddings", sent)
            received.append(sent)
        grads = lender.step(own[batch], labels[batch], received)
        for p, grad in zip(parties, grads, strict=True):  # gradients back to each party
            if transcript is not None:
                grad = transcript.send("finetune", LENDER, p, "embedding-gradients", grad)
            tuners[p].backward(features[p][batch], grad)
    return lender.top()


@dataclass
class VerticalResult:
    """Metrics per setting and mode, ε per party, the ledgers' entries and the transcript."""

    seed: int
    metrics: dict[str, dict[str, dict[str, float]]]
    centralized: dict[str, float]
    epsilon: dict[str, float]
    releases: dict[str, list[Release]]
    mechanisms: dict[str, float]
    transcript: Transcript
    ledgers: dict[str, Path] = field(default_factory=dict)


def centralized_logistic(scenario: VerticalScenario) -> dict[str, float]:
    """Reference: one logistic regression on all parties' columns pooled (simulation only)."""
    from sklearn.linear_model import LogisticRegression
    train_x = np.column_stack([scenario.views[p].train for p in PARTIES])
    test_x = np.column_stack([scenario.views[p].test for p in PARTIES])
    model = LogisticRegression(max_iter=5000).fit(train_x, scenario.train_labels)
    return credit_metrics(scenario.test_labels, model.predict_proba(test_x)[:, 1])


def run_private(scenario: VerticalScenario, settings: VerticalSettings, *, seed: int,
                transcript: Transcript) -> tuple[dict[str, dict[str, float]],
                                                 dict[str, list[Release]], dict[str, float]]:
    """The DP pipeline (stages 1-5); returns metrics per setting, releases and mechanisms."""
    s = settings
    lender = scenario.views[LENDER]
    noisy, label_release = lender_release(scenario.train_labels, settings=s, seed=seed,
                                          psi_run_id=scenario.psi_run_id)
    releases = {LENDER: [label_release]}
    received = {p: transcript.send("labels", LENDER, p, "noisy-labels", noisy) for p in PASSIVE}
    train_emb, test_emb, outcomes = {}, {}, {}
    for party in PASSIVE:
        view = scenario.views[party]
        outcome = outcomes[party] = passive_release(party, view.train, received[party],
                                                    settings=s, seed=seed)
        train_emb[party] = transcript.send("embeddings", party, LENDER, "embeddings",
                                           outcome.released)
        releases[party] = outcome.releases
        test_emb[party] = transcript.send("scoring", party, LENDER, "scoring-embeddings",
                                          scoring_embeddings(outcome.bottom, view.test,
                                                             centre=outcome.centre, settings=s))
    tops = fit_private_tops(lender.train, train_emb,
                            {p: o.noise_std for p, o in outcomes.items()},
                            scenario.train_labels, settings=s, seed=seed)
    metrics = setting_metrics(tops, lender.test, dict.fromkeys(tops, test_emb),
                              scenario.test_labels)
    mechanisms = plan_mechanisms(label_release.event,
                                 {p: o.bottom_event for p, o in outcomes.items()},
                                 {p: o.embedding_event for p, o in outcomes.items()})
    return metrics, releases, mechanisms


def run_non_private(scenario: VerticalScenario, settings: VerticalSettings, *, seed: int,
                    transcript: Transcript | None = None) -> dict[str, dict[str, float]]:
    """Stacking with true labels and exact embeddings, then joint fine-tuning (no DP)."""
    s, seeds = settings, non_private_seeds(seed)
    lender, y = scenario.views[LENDER], scenario.train_labels
    tops, test_emb = {}, {}
    for parties in SETTINGS:
        name, passive = setting_name(parties), passives_of(parties)
        bottoms = {p: non_private_bottom(p, parties, scenario.views[p].train, y, settings=s,
                                         seed=seed) for p in passive}
        emb = [exact_embeddings(bottoms[p], scenario.views[p].train) for p in passive]
        tops[name] = fit_top(lender.train, emb, y, settings=s.top, seed=seeds[0])
        if passive:
            tops[name] = joint_finetune(tops[name], bottoms, lender.train,
                                        {p: scenario.views[p].train for p in passive}, y,
                                        settings=s.finetune, seed=seeds[3],
                                        transcript=transcript)
        test_emb[name] = {p: exact_embeddings(bottoms[p], scenario.views[p].test)
                          for p in passive}
    return setting_metrics(tops, lender.test, test_emb, scenario.test_labels)


def run_vertical_in_memory(seed: int = 0, settings: VerticalSettings | None = None, *,
                           scenario: VerticalScenario | None = None,
                           spec: VerticalSpec | None = None,
                           ledger_dir: Path | None = None,
                           keys: Mapping[str, Ed25519PrivateKey] | None = None,
                           non_private: bool = True,
                           transcript_finetune: bool = False) -> VerticalResult:
    """Run credit_data_vertical (or the parties' own CSVs of a vertical data `spec`) in one
    process: DP and non-private, every party combination.

    Reports pooled test AUC/KS per setting ('dp' and 'non_private'), the centralized logistic
    regression reference, each party's ε from its releases, and, with `ledger_dir` and `keys`,
    writes each party's signed ledger `<party>.jsonl` there (run id = the PSI run id).
    """
    settings = settings or VerticalSettings()
    scenario = scenario or load_vertical_scenario(seed, test_fraction=settings.test_fraction,
                                                  spec=spec)
    transcript = Transcript()
    dp_metrics, releases, mechanisms = run_private(scenario, settings, seed=seed,
                                                   transcript=transcript)
    metrics = {"dp": dp_metrics}
    if non_private:
        metrics["non_private"] = run_non_private(
            scenario, settings, seed=seed, transcript=transcript if transcript_finetune else None)
    budgets = {p: settings.lender_epsilon if p == LENDER else settings.epsilon for p in PARTIES}
    epsilon = {p: releases_epsilon(releases[p], settings.delta) for p in PARTIES}
    result = VerticalResult(seed=seed, metrics=metrics, centralized=centralized_logistic(scenario),
                            epsilon=epsilon, releases=releases, mechanisms=mechanisms,
                            transcript=transcript)
    if ledger_dir is not None:
        if keys is None:
            raise ValueError("writing ledgers needs each party's signing key")
        for party in PARTIES:
            path = ledger_file(ledger_dir, party)
            write_ledger(path, keys[party], party, scenario.psi_run_id, releases[party],
                         epsilon_budget=budgets[party], delta=settings.delta)
            result.ledgers[party] = path
    log.info("vertical seed %d: %s", seed, {k: v["auc"] for k, v in dp_metrics.items()})
    return result
