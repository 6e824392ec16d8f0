"""The DP stages, each party's side: stage 1 labels (lender), stages 2-3 bottoms and released
embeddings (passive), stage 5 clean embeddings (passive), stage 4 and scoring (lender)."""

from __future__ import annotations

import logging
from typing import NoReturn

import numpy as np
import torch
from flwr.app import ConfigRecord, Message, MetricRecord

from clients.vertical.base import PASSIVE_ROLE, PartyBase, array_record, arrays_of
from common.data.scenarios import LENDER, PASSIVE
from common.errors import Refusal
from common.learning.model import build_model, get_weights, set_weights
from common.protocol import (
    ALIGN_STATE,
    BOTTOM_SAMPLE_RATE,
    BOTTOM_SIGMA,
    BOTTOM_STATE,
    BOTTOM_STEPS,
    CENTRE,
    CUSTOMER,
    DP_TOPS_STATE,
    EMBEDDING_NOISE_MULTIPLIER,
    EMBEDDINGS,
    EPSILON_BUDGET,
    EPSILON_SPENT,
    LABEL_NOISE_MULTIPLIER,
    LABELS,
    METRICS,
    NOISE_STD,
    NON_PRIVATE,
    NOT_SCORING,
    SCORE,
    SCORE_DECLINED,
    SCORED,
    SCORED_STATE,
    SCORES_RELEASED,
    SEALED,
    STEP_BOTTOM,
    STEP_LABELS,
    VFL_BOTTOM,
    VFL_EMBED,
    VFL_LABELS,
    VOUCHED,
    VOUCHER_STATE,
    VOUCHERS,
    VOUCHERS_SPENT,
    evaluation_step,
    non_private_state,
    setting_metric,
)
from common.vertical.finetune import FinetuneBottom, FinetuneTop
from common.vertical.parties import SETTINGS, setting_name
from common.vertical.releases import lender_release
from common.vertical.stages import (
    TopModel,
    exact_embeddings,
    fit_private_tops,
    non_private_bottom,
    passive_release,
    score,
    scoring_embeddings,
    setting_metrics,
)

ALL_THREE = setting_name(SETTINGS[-1])
log = logging.getLogger(__name__)


def _top_weights(setting: str) -> str:
    return f"{setting}.weights"


def _top_bias(setting: str) -> str:
    return f"{setting}.bias"


class StageHandlers(PartyBase):
    """`query.vfl_labels`, `train.vfl_bottom`, `query.vfl_embed`, `evaluate.vfl_score` and
    `query.vfl_score` (each in DP or non-private mode)."""

    def labels(self) -> Message:
        """Lender, stage 1: the noisy labels (one release, in its ledger); non-private: true."""
        self.require(LENDER)
        labels, mode = self.train_labels(), self.mode()
        if mode == NON_PRIVATE:
            return self.reply(
                {SEALED: self.sealed_for(dict.fromkeys(PASSIVE, {LABELS: labels}), mode=mode)}
            )
        self.once(STEP_LABELS)
        _, _, _, run_id = self.alignment()
        noisy, release = lender_release(
            labels, settings=self.settings, seed=self.noise_seed(), psi_run_id=run_id
        )
        spent = self.record_releases([release], self.settings.lender_epsilon)
        # one release, sealed once for each partner
        sealed = self.sealed_for(dict.fromkeys(PASSIVE, {LABELS: noisy}), mode=mode)
        return self.reply(
            {
                SEALED: sealed,
                METRICS: MetricRecord(
                    {
                        EPSILON_SPENT: spent,
                        EPSILON_BUDGET: self.settings.lender_epsilon,
                        LABEL_NOISE_MULTIPLIER: release.event.noise_multiplier,
                    }
                ),
            }
        )

    def bottom(self) -> Message:
        """Passive, stages 2-3 (DP) or its non-private bottoms, one per setting it is in."""
        self.require(PASSIVE_ROLE)
        view, mode = self.view(), self.mode()
        labels = self.open_from(LENDER, [VFL_LABELS], mode=mode)[0][LABELS]
        if len(labels) != len(view.train):
            raise Refusal(f"{self.name}: the labels do not fit our training rows")
        if mode == NON_PRIVATE:
            embeddings = {}
            for parties in SETTINGS:
                if self.name in parties:
                    name = setting_name(parties)
                    bottom = non_private_bottom(
                        self.name,
                        parties,
                        view.train,
                        labels,
                        settings=self.settings,
                        seed=self.run.seed,
                    )
                    self.context.state[non_private_state(name)] = array_record(
                        FinetuneBottom(bottom, self.settings.finetune).arrays()
                    )
                    embeddings[name] = exact_embeddings(bottom, view.train)
            return self.reply({SEALED: self.sealed_for({LENDER: embeddings}, mode=mode)})
        self.once(STEP_BOTTOM)
        outcome = passive_release(
            self.name, view.train, labels, settings=self.settings, seed=self.noise_seed()
        )
        spent = self.record_releases(outcome.releases, self.settings.epsilon)
        self.context.state[BOTTOM_STATE] = array_record(
            {**get_weights(outcome.bottom), CENTRE: np.array([outcome.centre])}
        )
        dp_sgd, release = outcome.bottom_event, outcome.embedding_event
        sealed = self.sealed_for(
            {LENDER: {EMBEDDINGS: outcome.released, NOISE_STD: np.array(outcome.noise_std)}},
            mode=mode,
        )
        return self.reply(
            {
                SEALED: sealed,
                METRICS: MetricRecord(
                    {
                        EPSILON_SPENT: spent,
                        EPSILON_BUDGET: self.settings.epsilon,
                        NOISE_STD: outcome.noise_std,
                        BOTTOM_SIGMA: dp_sgd.noise_multiplier,
                        BOTTOM_SAMPLE_RATE: dp_sgd.sample_rate,
                        BOTTOM_STEPS: dp_sgd.steps,
                        EMBEDDING_NOISE_MULTIPLIER: release.noise_multiplier,
                    }
                ),
            }
        )

    def _dp_bottom(self) -> tuple[torch.nn.Module, float]:
        arrays = arrays_of(self.context.state.array_records[BOTTOM_STATE])
        centre = float(arrays.pop(CENTRE)[0])
        bottom = build_model(arrays["net.0.weight"].shape[1], (), 0)
        set_weights(bottom, arrays)
        return bottom, centre

    def embed(self) -> Message:
        """Passive, stage 5: clean embeddings of the test rows, or one customer's voucher."""
        self.require(PASSIVE_ROLE)
        mode = self.mode()
        vouched: dict[str, np.ndarray | str] = {}
        if CUSTOMER in self.config:
            rows, vouched = self._voucher()
        else:
            rows = self.view().test
        if mode == NON_PRIVATE:
            embeddings = {
                name: exact_embeddings(self.tuner(name).bottom, rows) for name in self.my_settings()
            }
        else:
            bottom, centre = self._dp_bottom()
            embeddings = {
                EMBEDDINGS: scoring_embeddings(bottom, rows, centre=centre, settings=self.settings)
            }
        if vouched and not vouched[VOUCHED]:
            embeddings = {name: np.zeros_like(e) for name, e in embeddings.items()}
        # a customer's payload names it: the lender scores only customers every partner vouched
        # for through the channel
        return self.reply({SEALED: self.sealed_for({LENDER: {**embeddings, **vouched}}, mode=mode)})

    def _voucher(self) -> tuple[np.ndarray, dict[str, np.ndarray | str]]:
        """Passive: the row to embed for the scoring request's customer and its voucher.

        Answered only when the lender said in its sealed split that it scores in this run, and
        at most `max-vouchers` times per run; then always alike: for a customer this party does
        not know, or one of its aligned training customers (whose embedding was released once,
        with DP, never in clear), an all-zero row and `VOUCHED` 0, so the sealed reply has the
        same size whether or not it knows the customer and only the lender can tell."""
        aligned, train, _, _ = self.alignment()
        if not self.context.state.config_records[ALIGN_STATE].get(SCORES_RELEASED, False):
            raise Refusal(f"{self.name}: {NOT_SCORING}")
        used = int(self.context.state.config_records.get(VOUCHER_STATE, {}).get(VOUCHERS, 0))
        if used >= self.node.max_vouchers:
            raise Refusal(f"{self.name}: {VOUCHERS_SPENT.format(cap=self.node.max_vouchers)}")
        self.context.state[VOUCHER_STATE] = ConfigRecord({VOUCHERS: used + 1})
        customer = str(self.config[CUSTOMER])
        try:
            row = self.data.row_of(customer)
        except KeyError:
            row = -1
        known = row >= 0 and row not in set(aligned[train].tolist())
        rows = self.data.features[[row]] if known else np.zeros_like(self.data.features[:1])
        return rows, {CUSTOMER: customer, VOUCHED: np.array(int(known))}

    def _tops(self, mode: str) -> dict[str, TopModel]:
        if mode == NON_PRIVATE:
            return {
                setting_name(p): FinetuneTop.from_arrays(
                    arrays_of(self.context.state.array_records[non_private_state(setting_name(p))]),
                    self.settings.finetune,
                ).top()
                for p in SETTINGS
            }
        arrays = arrays_of(self.context.state.array_records[DP_TOPS_STATE])
        return {
            setting_name(p): TopModel(
                arrays[_top_weights(setting_name(p))].astype(float),
                float(arrays[_top_bias(setting_name(p))][0]),
            )
            for p in SETTINGS
        }

    def _test_embeddings(self, payload: dict[str, np.ndarray], sender: str) -> None:
        """Refuse test embeddings that are a customer's or do not fit the test rows."""
        num_test = len(self.alignment()[2])
        if CUSTOMER in payload or any(len(a) != num_test for a in payload.values()):
            raise Refusal(f"{self.name}: {sender}'s test embeddings do not fit the test rows")

    def evaluate(self) -> Message:
        """Lender: stage 4 (DP: EIV-corrected tops on the noisy embeddings) and the pooled test
        AUC/KS per setting from the clean test embeddings. The metrics go to the coordinator only
        with node config `release-evaluation` (else they stay in the lender's own log)."""
        self.require(LENDER)
        mode = self.mode()
        self.once(evaluation_step(mode))  # the test labels answer one evaluation, not an oracle
        view, aligned_test = self.view(), self.alignment()[2]
        assert self.data.labels is not None
        test_labels = self.data.labels[self.alignment()[0]][aligned_test]
        if mode == NON_PRIVATE:
            tops = self._tops(mode)
            embedded = {p: self.open_from(p, [VFL_EMBED], mode=mode)[0] for p in PASSIVE}
            for p, payload in embedded.items():
                self._test_embeddings(payload, p)
            test = {
                name: {p: embedded[p][name] for p in PASSIVE if name in embedded[p]}
                for name in tops
            }
        else:
            train, embedded, noise = {}, {}, {}
            for p in PASSIVE:
                released, clean = self.open_from(p, [VFL_BOTTOM, VFL_EMBED], mode=mode)
                self._test_embeddings(clean, p)
                train[p], embedded[p] = released[EMBEDDINGS], clean[EMBEDDINGS]
                noise[p] = float(released[NOISE_STD])
            tops = fit_private_tops(
                view.train,
                train,
                noise,
                self.train_labels(),
                settings=self.settings,
                seed=self.run.seed,
            )
            self.context.state[DP_TOPS_STATE] = array_record(
                {
                    **{_top_weights(k): t.weights for k, t in tops.items()},
                    **{_top_bias(k): np.array([t.bias]) for k, t in tops.items()},
                }
            )
            test = dict.fromkeys(tops, embedded)
        metrics = setting_metrics(tops, view.test, test, test_labels)
        if not self.node.release_evaluation:
            log.info(
                "%s keeps its %s evaluation (release-evaluation is off): %s",
                self.name,
                mode,
                metrics,
            )
            return self.reply({METRICS: MetricRecord()})
        return self.reply(
            {
                METRICS: MetricRecord(
                    {
                        setting_metric(name, key): value
                        for name, m in metrics.items()
                        for key, value in m.items()
                    }
                )
            }
        )

    def score(self) -> Message:
        """Lender: the score of one customer from its columns and the partners' embeddings.

        Scores only with node config `release-scores`, at most `max-scored-customers` customers
        and each once per run, and only a customer every partner vouched for through the channel
        (its sealed embedding names the customer) who is not one of the lender's training
        customers. Every refusal is logged."""
        self.require(LENDER)
        mode, customer = self.mode(), str(self.config[CUSTOMER])
        record = self.context.state.config_records.get(SCORED_STATE, ConfigRecord())
        scored = [str(c) for c in record.get(SCORED, [])]
        if not self.node.release_scores:
            self._refuse_score("it does not release scores (node config 'release-scores')")
        if customer in scored:
            self._refuse_score("this customer was already scored in this run")
        if len(scored) >= self.node.max_scored_customers:
            self._refuse_score(
                f"it scored its maximum of {self.node.max_scored_customers} "
                "customers in this run (node config 'max-scored-customers')"
            )
        vouched = {p: self.open_from(p, [VFL_EMBED], mode=mode)[0] for p in PASSIVE}
        if any(str(payload.get(CUSTOMER, "")) != customer for payload in vouched.values()):
            self._refuse_score("not every partner vouched for this customer")
        aligned, train, _, _ = self.alignment()
        try:
            row = self.data.row_of(customer)
        except KeyError:
            row = -1
        known = all(int(payload.get(VOUCHED, 0)) == 1 for payload in vouched.values())
        if not known or row < 0 or row in set(aligned[train].tolist()):
            # one reason for all: it does not say which party lacks the customer
            self._refuse_score(SCORE_DECLINED)
        self.context.state[SCORED_STATE] = ConfigRecord({SCORED: [*scored, customer]})
        key = ALL_THREE if mode == NON_PRIVATE else EMBEDDINGS
        embeddings = [vouched[p][key].reshape(-1) for p in PASSIVE]
        value = score(self._tops(mode)[ALL_THREE], self.data.features[[row]], embeddings)
        return self.reply({METRICS: MetricRecord({SCORE: float(value[0])})})

    def _refuse_score(self, reason: str) -> NoReturn:
        """Log and raise the lender's refusal to score (the reason names no data value)."""
        log.warning("%s refuses to score a customer: %s", self.name, reason)
        raise Refusal(f"{self.name} cannot score this customer ({reason})")
