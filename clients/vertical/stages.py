"""The DP stages, each party's side: stage 1 labels (lender), stages 2-3 bottoms and released
embeddings (passive), stage 5 clean embeddings (passive), stage 4 and scoring (lender)."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Message, MetricRecord

from clients.vertical.base import PASSIVE_ROLE, PartyBase, array_record, arrays_of
from common.data.scenarios import LENDER, PASSIVE
from common.errors import Refusal
from common.learning.model import build_model, get_weights, set_weights
from common.protocol import (
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
    SCORE,
    STEP_BOTTOM,
    STEP_LABELS,
    TEST_ROWS,
    TRAIN_ROWS,
    evaluation_step,
    non_private_state,
    party_record,
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
        labels = self.train_labels()
        if self.mode() == NON_PRIVATE:
            return self.reply({LABELS: array_record({LABELS: labels})})
        self.once(STEP_LABELS)
        _, _, _, run_id = self.alignment()
        noisy, release = lender_release(labels, settings=self.settings, seed=self.noise_seed(),
                                        psi_run_id=run_id)
        spent = self.record_releases([release], self.settings.lender_epsilon)
        return self.reply({LABELS: array_record({LABELS: noisy}), METRICS: MetricRecord({
            EPSILON_SPENT: spent, EPSILON_BUDGET: self.settings.lender_epsilon,
            LABEL_NOISE_MULTIPLIER: release.event.noise_multiplier})})

    def bottom(self) -> Message:
        """Passive, stages 2-3 (DP) or its non-private bottoms, one per setting it is in."""
        self.require(PASSIVE_ROLE)
        view = self.view()
        labels = arrays_of(self.msg.content.array_records[LABELS])[LABELS]
        if self.mode() == NON_PRIVATE:
            embeddings = {}
            for parties in SETTINGS:
                if self.name in parties:
                    name = setting_name(parties)
                    bottom = non_private_bottom(self.name, parties, view.train, labels,
                                                settings=self.settings, seed=self.run.seed)
                    self.context.state[non_private_state(name)] = array_record(
                        FinetuneBottom(bottom, self.settings.finetune).arrays())
                    embeddings[name] = exact_embeddings(bottom, view.train)
            return self.reply({EMBEDDINGS: array_record(embeddings)})
        self.once(STEP_BOTTOM)
        outcome = passive_release(self.name, view.train, labels, settings=self.settings,
                                  seed=self.noise_seed())
        spent = self.record_releases(outcome.releases, self.settings.epsilon)
        self.context.state[BOTTOM_STATE] = array_record(
            {**get_weights(outcome.bottom), CENTRE: np.array([outcome.centre])})
        dp_sgd, release = outcome.bottom_event, outcome.embedding_event
        return self.reply({EMBEDDINGS: array_record({EMBEDDINGS: outcome.released}),
                           METRICS: MetricRecord({
                               EPSILON_SPENT: spent, EPSILON_BUDGET: self.settings.epsilon,
                               NOISE_STD: outcome.noise_std,
                               BOTTOM_SIGMA: dp_sgd.noise_multiplier,
                               BOTTOM_SAMPLE_RATE: dp_sgd.sample_rate, BOTTOM_STEPS: dp_sgd.steps,
                               EMBEDDING_NOISE_MULTIPLIER: release.noise_multiplier})})

    def _dp_bottom(self) -> tuple[torch.nn.Module, float]:
        arrays = arrays_of(self.context.state.array_records[BOTTOM_STATE])
        centre = float(arrays.pop(CENTRE)[0])
        bottom = build_model(arrays["net.0.weight"].shape[1], (), 0)
        set_weights(bottom, arrays)
        return bottom, centre

    def embed(self) -> Message:
        """Passive, stage 5: clean embeddings of the test rows or of one `customer`."""
        self.require(PASSIVE_ROLE)
        mode = self.mode()
        if CUSTOMER in self.config:
            aligned, train, _, _ = self.alignment()
            try:
                row = self.data.row_of(str(self.config[CUSTOMER]))
            except KeyError:
                row = -1
            if row < 0 or row in set(aligned[train].tolist()):
                # Training customers' embeddings were released once, with DP: never in clear.
                raise Refusal(f"{self.name} cannot score this customer (unknown to it, or a "
                              "training customer)")
            rows = self.data.features[[row]]
        else:
            rows = self.view().test
        if mode == NON_PRIVATE:
            return self.reply({EMBEDDINGS: array_record({
                name: exact_embeddings(self.tuner(name).bottom, rows)
                for name in self.my_settings()})})
        bottom, centre = self._dp_bottom()
        return self.reply({EMBEDDINGS: array_record({EMBEDDINGS: scoring_embeddings(
            bottom, rows, centre=centre, settings=self.settings)})})

    def _tops(self, mode: str) -> dict[str, TopModel]:
        if mode == NON_PRIVATE:
            return {setting_name(p): FinetuneTop.from_arrays(arrays_of(
                self.context.state.array_records[non_private_state(setting_name(p))]),
                self.settings.finetune).top() for p in SETTINGS}
        arrays = arrays_of(self.context.state.array_records[DP_TOPS_STATE])
        return {setting_name(p): TopModel(arrays[_top_weights(setting_name(p))].astype(float),
                                          float(arrays[_top_bias(setting_name(p))][0]))
                for p in SETTINGS}

    def evaluate(self) -> Message:
        """Lender: stage 4 (DP: EIV-corrected tops on the noisy embeddings) and the pooled test
        AUC/KS per setting from the clean test embeddings; only metrics leave."""
        self.require(LENDER)
        mode = self.mode()
        self.once(evaluation_step(mode))  # the test labels answer one evaluation, not an oracle
        records = self.msg.content.array_records
        view, aligned_test = self.view(), self.alignment()[2]
        assert self.data.labels is not None
        test_labels = self.data.labels[self.alignment()[0]][aligned_test]
        if mode == NON_PRIVATE:
            tops = self._tops(mode)
            test = {name: {p: arrays_of(records[party_record(TEST_ROWS, p)])[name]
                           for p in PASSIVE if party_record(TEST_ROWS, p) in records
                           and name in records[party_record(TEST_ROWS, p)]} for name in tops}
        else:
            noise = self.msg.content.metric_records[NOISE_STD]
            tops = fit_private_tops(
                view.train,
                {p: arrays_of(records[party_record(TRAIN_ROWS, p)])[EMBEDDINGS] for p in PASSIVE},
                {p: float(noise[p]) for p in PASSIVE}, self.train_labels(),
                settings=self.settings, seed=self.run.seed)
            self.context.state[DP_TOPS_STATE] = array_record({
                **{_top_weights(k): t.weights for k, t in tops.items()},
                **{_top_bias(k): np.array([t.bias]) for k, t in tops.items()}})
            test = dict.fromkeys(tops, {p: arrays_of(records[party_record(TEST_ROWS, p)])[
                EMBEDDINGS] for p in PASSIVE})
        metrics = setting_metrics(tops, view.test, test, test_labels)
        return self.reply({METRICS: MetricRecord({setting_metric(name, key): value
                                                  for name, m in metrics.items()
                                                  for key, value in m.items()})})

    def score(self) -> Message:
        """Lender: the score of one customer from its columns and the partners' embeddings."""
        self.require(LENDER)
        mode = self.mode()
        try:
            row = self.data.row_of(str(self.config[CUSTOMER]))
        except KeyError:
            raise Refusal(f"{self.name} does not know this customer") from None
        records = self.msg.content.array_records
        key = ALL_THREE if mode == NON_PRIVATE else EMBEDDINGS
        embeddings = [arrays_of(records[party_record(CUSTOMER, p)])[key] for p in PASSIVE]
        value = score(self._tops(mode)[ALL_THREE], self.data.features[[row]], embeddings)
        return self.reply({METRICS: MetricRecord({SCORE: float(value[0])})})
