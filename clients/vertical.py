"""Vertical FL ClientApp handlers: each party holds ONLY its own table and runs only its stages.

A party is the lender (partition-id 0), ecommerce (1) or bank (2) in simulation, or the node
config `partner` when deployed. It loads its own known customer IDs and its own columns
(`common.vertical.load_party`), runs its side of the PSI and of stages 1-5, keeps its state
(PSI keys and order, alignment, models) in the Context state between messages, and writes its
own signed ledger. Message types (the coordinator only relays; see `server.vertical`):

- `query.vfl_hello` -> the party's name;
- `query.psi_open` (lender) -> one `BlindedSet` record per partner;
- `query.psi_respond` (passive) -> its `PassiveReply` record;
- `query.psi_finish` (lender, with the replies) -> one `Alignment` record per partner (in the
  lender's row order) and the `split`: test positions of the aligned rows;
- `query.psi_align`, `query.vfl_split` (passive) -> sizes only;
- `query.vfl_labels` (lender) -> stage 1 noisy labels (true labels in non-private mode);
- `train.vfl_bottom` (passive, with the labels) -> stage 2-3: released embeddings of its
  training rows (exact, one per setting, in non-private mode);
- `query.vfl_embed` (passive) -> clean embeddings of its test rows, or of one `customer`;
- `train.vfl_top` (lender, non-private) -> fits the tops, then per fine-tuning step the gradients
  w.r.t. the received embeddings and the next batch's positions;
- `train.vfl_finetune` (passive, non-private) -> applies a gradient, returns the next batch's
  embeddings;
- `evaluate.vfl_score` (lender, with the embeddings) -> stage 4 top models and pooled test
  AUC/KS per setting (metrics only);
- `query.vfl_score` (lender, with one customer's embeddings) -> that customer's score.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from common.config import PartnerConfig, RunConfig
from common.data.scenarios import LENDER, PASSIVE
from common.errors import Refusal
from common.learning.model import build_model, get_weights, set_weights
from common.privacy.crypto import load_private_key
from common.privacy.randomness import noise_seed
from common.protocol import VERTICAL_REFUSAL_CODE
from common.vertical.finetune import FinetuneBottom, FinetuneTop, finetune_batches
from common.vertical.parties import (
    SETTINGS,
    PartyData,
    PartyView,
    lender_row_order,
    load_party,
    party_view,
    passives_of,
    setting_name,
    split_aligned,
    split_seed,
)
from common.vertical.psi import (
    Alignment,
    LenderParty,
    PassiveParty,
    message_from_record,
    message_to_record,
)
from common.vertical.releases import lender_release, releases_epsilon, write_ledger
from common.vertical.settings import VerticalSettings, non_private_seeds
from common.vertical.stages import (
    TopModel,
    exact_embeddings,
    fit_private_tops,
    fit_top,
    non_private_bottom,
    passive_release,
    score,
    scoring_embeddings,
    setting_metrics,
)

log = logging.getLogger(__name__)
DP, NON_PRIVATE = "dp", "non-private"
_PSI, _ALIGN, _BOTTOM, _DONE = "vfl.psi", "vfl.align", "vfl.bottom", "vfl.done"
ALL_THREE = setting_name(SETTINGS[-1])



@lru_cache(maxsize=4)
def own_data(party: str, seed: int) -> PartyData:
    """This party's own table, cached per process (it is read-only)."""
    return load_party(party, seed)


def resolve_party(context: Context, overrides: dict) -> tuple[RunConfig, PartnerConfig]:
    """The run config and this node's party (partition id in simulation, `partner` deployed)."""
    torch.set_num_threads(1)
    run = RunConfig.from_flower({**dict(context.run_config), **overrides})
    return run, PartnerConfig.from_node_config(dict(context.node_config), run)


def _arrays(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {k: a.numpy() for k, a in record.items()}


def _array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def _mode(msg: Message, partner: PartnerConfig) -> str:
    mode = str(msg.content.config_records.get("config", ConfigRecord()).get("mode", DP))
    if mode not in (DP, NON_PRIVATE):
        raise Refusal(f"unknown mode {mode!r}")
    if mode == NON_PRIVATE and partner.deployed:
        raise Refusal("a deployed party never runs the non-private mode")
    if mode == DP and not partner.private:
        raise Refusal("this party has no privacy budget: the DP mode needs one")
    return mode


class Party:
    """One party's handlers over its own data and its Context state."""

    def __init__(self, msg: Message, context: Context, overrides: dict) -> None:
        self.msg, self.context = msg, context
        self.run, self.partner = resolve_party(context, overrides)
        self.name = self.partner.partner
        self.data = own_data(self.name, self.run.seed)
        self.settings = VerticalSettings.from_config(self.run, self.partner)

    @property
    def config(self) -> ConfigRecord:
        """The message's `config` record."""
        return self.msg.content.config_records.get("config", ConfigRecord())

    def require(self, role: str) -> None:
        """Refuse a message meant for the other role."""
        if (role == LENDER) != (self.name == LENDER):
            raise Refusal(f"{self.name} is not the {role} party")

    def noise_seed(self) -> int:
        """Seed of this party's sampling and noise: the run seed only in simulation (a
        reproducible analysis); a deployed party draws it from the OS, since whoever knows
        the seed could subtract the noise."""
        return noise_seed(deployed=self.partner.deployed, simulated=self.run.seed)

    def once(self, step: str) -> None:
        """Refuse a second `step` in this run: each release is made (and accounted) once."""
        done = self.context.state.config_records.get(_DONE, ConfigRecord())
        if step in done:
            raise Refusal(f"{self.name}: {step} was already done in this run")
        done[step] = True
        self.context.state[_DONE] = done

    def reply(self, **records: ConfigRecord | ArrayRecord | MetricRecord) -> Message:
        """A reply carrying `records`."""
        return Message(content=RecordDict(dict(records)), reply_to=self.msg)

    # ------------------------------------------------------------------ alignment state

    def alignment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """(aligned own rows, train positions, test positions, PSI run id) from the state."""
        state = self.context.state.config_records.get(_ALIGN)
        if state is None or "test" not in state:
            raise Refusal(f"{self.name}: no PSI alignment and split yet")
        aligned = np.asarray(state["aligned"], dtype=int)
        test = np.asarray(state["test"], dtype=int)
        train = np.setdiff1d(np.arange(len(aligned)), test)
        return aligned, train, test, str(state["run"])

    def view(self) -> PartyView:
        """This party's aligned training and test rows."""
        aligned, train, test, _ = self.alignment()
        return party_view(self.data, aligned, train, test)

    def train_labels(self) -> np.ndarray:
        """Lender: labels of its aligned training rows."""
        aligned, train, _, _ = self.alignment()
        assert self.data.labels is not None
        return self.data.labels[aligned][train]

    # ------------------------------------------------------------------ PSI

    def psi_open(self) -> Message:
        """Lender: open one PSI session per partner; the keys stay in the state."""
        self.require(LENDER)
        self.once("psi")
        lender = LenderParty(LENDER, self.data.ids, run_id=str(self.config["psi-run-id"]),
                             partners=list(PASSIVE))
        records = {f"psi.{p}": ConfigRecord(message_to_record(lender.open_session(p)))
                   for p in PASSIVE}
        self.context.state[_PSI] = ConfigRecord({**lender.session_state(),
                                                 "run": lender.run_id})
        return self.reply(**records)

    def psi_respond(self) -> Message:
        """Passive: blind our IDs and the lender's once more; keep our secret order."""
        self.require("passive")
        self.once("psi")
        opening = message_from_record(dict(self.msg.content.config_records["psi"]))
        party = PassiveParty(self.name, self.data.ids, run_id=opening.run_id, lender=LENDER)
        answer = party.respond(opening)
        self.context.state[_PSI] = ConfigRecord({"rows": party.sent_order(),
                                                 "run": opening.run_id})
        return self.reply(psi=ConfigRecord(message_to_record(answer)))

    def psi_finish(self) -> Message:
        """Lender: match the replies, order the aligned rows by its own row, split them."""
        self.require(LENDER)
        state = dict(self.context.state.config_records[_PSI])
        lender = LenderParty(LENDER, self.data.ids, run_id=str(state["run"]),
                             partners=list(PASSIVE))
        lender.restore_sessions(state)
        for p in PASSIVE:
            lender.receive(message_from_record(dict(self.msg.content.config_records[f"psi.{p}"])))
        alignments = lender.finish()
        order = lender_row_order(lender.aligned_rows or [])
        aligned = np.asarray(lender.aligned_rows, dtype=int)[order]
        _, test = split_aligned(len(aligned), test_fraction=self.run.test_fraction,
                                seed=split_seed(self.run.seed))
        del self.context.state[_PSI]  # the session keys are spent
        self.context.state[_ALIGN] = ConfigRecord({"aligned": aligned.tolist(),
                                                   "test": test.tolist(), "run": lender.run_id})
        records = {f"psi.{a.recipient}": ConfigRecord(message_to_record(Alignment(
            a.run_id, a.sender, a.recipient, tuple(int(i) for i in np.asarray(a.indices)[order]))))
            for a in alignments}
        return self.reply(**records, split=ConfigRecord({"test-positions": test.tolist(),
                                                         "num-aligned": len(aligned)}))

    def psi_align(self) -> Message:
        """Passive: map the lender's positions back to our own rows."""
        self.require("passive")
        state = dict(self.context.state.config_records[_PSI])
        party = PassiveParty(self.name, self.data.ids, run_id=str(state["run"]), lender=LENDER)
        party.restore_sent_order(state["rows"])
        aligned = party.align(message_from_record(dict(self.msg.content.config_records["psi"])))
        del self.context.state[_PSI]
        self.context.state[_ALIGN] = ConfigRecord({"aligned": aligned, "run": party.run_id})
        return self.reply(info=ConfigRecord({"num-aligned": len(aligned)}))

    def split(self) -> Message:
        """Passive: which of our aligned rows are test rows (positions only)."""
        self.require("passive")
        self.once("split")
        state = self.context.state.config_records[_ALIGN]
        test = [int(i) for i in self.config["test-positions"]]
        aligned = len(state["aligned"])
        expected = round(aligned * self.run.test_fraction)
        if (int(self.config["num-aligned"]) != aligned or len(set(test)) != len(test)
                or len(test) != expected or any(not 0 <= i < aligned for i in test)):
            raise Refusal(f"{self.name}: the split does not fit our alignment (distinct "
                          f"positions, {expected} of {aligned} rows)")
        state["test"] = test
        return self.reply(info=ConfigRecord({"num-train": len(state["aligned"]) - len(test),
                                             "num-test": len(test)}))

    # ------------------------------------------------------------------ stages 1-3

    def labels(self) -> Message:
        """Lender, stage 1: the noisy labels (one release, in its ledger); non-private: true."""
        self.require(LENDER)
        labels = self.train_labels()
        if _mode(self.msg, self.partner) == NON_PRIVATE:
            return self.reply(labels=_array_record({"labels": labels}))
        self.once("labels")
        _, _, _, run_id = self.alignment()
        noisy, release = lender_release(labels, settings=self.settings, seed=self.noise_seed(),
                                        psi_run_id=run_id)
        spent = self.record_releases([release], self.settings.lender_epsilon)
        return self.reply(labels=_array_record({"labels": noisy}), metrics=MetricRecord({
            "epsilon-spent": spent, "epsilon-budget": self.settings.lender_epsilon,
            "label-noise-multiplier": release.event.noise_multiplier}))

    def record_releases(self, releases: list, budget: float) -> float:
        """Append the releases to this party's signed ledger (refused over budget); ε spent."""
        _, _, _, run_id = self.alignment()
        if self.partner.ledger_path:
            write_ledger(Path(self.partner.ledger_path),
                         load_private_key(Path(self.partner.signing_key)), self.name, run_id,
                         releases, epsilon_budget=budget, delta=self.settings.delta)
        spent = releases_epsilon(releases, self.settings.delta)
        if spent > budget * (1 + 1e-9):
            raise Refusal(f"{self.name}: the releases would spend more than its budget")
        return spent

    def bottom(self) -> Message:
        """Passive, stages 2-3 (DP) or its non-private bottoms, one per setting it is in."""
        self.require("passive")
        view = self.view()
        labels = _arrays(self.msg.content.array_records["labels"])["labels"]
        if _mode(self.msg, self.partner) == NON_PRIVATE:
            embeddings = {}
            for parties in SETTINGS:
                if self.name in parties:
                    name = setting_name(parties)
                    bottom = non_private_bottom(self.name, parties, view.train, labels,
                                                settings=self.settings, seed=self.run.seed)
                    self.context.state[f"vfl.np.{name}"] = _array_record(
                        FinetuneBottom(bottom, self.settings.finetune).arrays())
                    embeddings[name] = exact_embeddings(bottom, view.train)
            return self.reply(embeddings=_array_record(embeddings))
        self.once("bottom")
        outcome = passive_release(self.name, view.train, labels, settings=self.settings,
                                  seed=self.noise_seed())
        spent = self.record_releases(outcome.releases, self.settings.epsilon)
        self.context.state[_BOTTOM] = _array_record(
            {**get_weights(outcome.bottom), "centre": np.array([outcome.centre])})
        plan = outcome.plan
        return self.reply(embeddings=_array_record({"embeddings": outcome.released}),
                          metrics=MetricRecord({
                              "epsilon-spent": spent, "epsilon-budget": self.settings.epsilon,
                              "noise-std": outcome.noise_std(self.settings),
                              "bottom-sigma": plan.sigma, "bottom-sample-rate": plan.sample_rate,
                              "bottom-steps": plan.steps,
                              "embedding-noise-multiplier": plan.embedding_noise_multiplier}))

    def _dp_bottom(self) -> tuple[torch.nn.Module, float]:
        arrays = _arrays(self.context.state.array_records[_BOTTOM])
        centre = float(arrays.pop("centre")[0])
        bottom = build_model(arrays["net.0.weight"].shape[1], (), 0)
        set_weights(bottom, arrays)
        return bottom, centre

    def embed(self) -> Message:
        """Passive, stage 5: clean embeddings of the test rows or of one `customer`."""
        self.require("passive")
        mode = _mode(self.msg, self.partner)
        if "customer" in self.config:
            aligned, train, _, _ = self.alignment()
            try:
                row = self.data.row_of(str(self.config["customer"]))
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
            return self.reply(embeddings=_array_record({
                name: exact_embeddings(self._tuner(name).bottom, rows)
                for name in self._my_settings()}))
        bottom, centre = self._dp_bottom()
        return self.reply(embeddings=_array_record({"embeddings": scoring_embeddings(
            bottom, rows, centre=centre, settings=self.settings)}))

    # ------------------------------------------------------------------ non-private fine-tuning

    def _my_settings(self) -> list[str]:
        return [setting_name(p) for p in SETTINGS if self.name in p and passives_of(p)]

    def _tuner(self, name: str) -> FinetuneBottom:
        return FinetuneBottom.from_arrays(_arrays(self.context.state.array_records[
            f"vfl.np.{name}"]), self.settings.finetune)

    def finetune(self) -> Message:
        """Passive, non-private: apply the lender's gradients of the last batch, then send the
        exact embeddings of the next batch (positions of its training rows)."""
        self.require("passive")
        _mode(self.msg, self.partner)
        train = self.view().train
        grads = _arrays(self.msg.content.array_records.get("grads", ArrayRecord()))
        embeddings = {}
        for name in self._my_settings():
            tuner = self._tuner(name)
            if name in grads:
                tuner.backward(train[list(self.config["previous-batch"])], grads[name])
            if "batch" in self.config:
                embeddings[name] = tuner.forward(train[list(self.config["batch"])])
            self.context.state[f"vfl.np.{name}"] = _array_record(tuner.arrays())
        return self.reply(embeddings=_array_record(embeddings))

    def top(self) -> Message:
        """Lender, non-private: fit the tops on the exact embeddings (`fit`), or one fine-tuning
        step of every setting's top (`step`); returns gradients and the next batch."""
        self.require(LENDER)
        _mode(self.msg, self.partner)
        own, labels = self.view().train, self.train_labels()
        received = {k: _arrays(r) for k, r in self.msg.content.array_records.items()}
        batches = finetune_batches(len(labels), self.settings.finetune,
                                   non_private_seeds(self.run.seed)[3])
        step = int(self.config["step"])
        grads = {}
        for parties in SETTINGS:
            name, passive = setting_name(parties), passives_of(parties)
            if step < 0:  # fit the stacked top model on the exact embeddings
                top = fit_top(own, [received[p][name] for p in passive], labels,
                              settings=self.settings.top, seed=non_private_seeds(self.run.seed)[0])
                tuner = FinetuneTop(top, self.settings.finetune)
            else:
                tuner = FinetuneTop.from_arrays(_arrays(self.context.state.array_records[
                    f"vfl.np.{name}"]), self.settings.finetune)
                if passive:
                    batch = batches[step]
                    for p, grad in zip(passive, tuner.step(
                            own[batch], labels[batch], [received[p][name] for p in passive]),
                            strict=True):
                        grads.setdefault(p, {})[name] = grad
            self.context.state[f"vfl.np.{name}"] = _array_record(tuner.arrays())
        records: dict = {f"grads.{p}": _array_record(g) for p, g in grads.items()}
        info: dict = {"steps": len(batches)}
        if step + 1 < len(batches):
            info["batch"] = batches[step + 1].tolist()
        return self.reply(**records, info=ConfigRecord(info))

    # ------------------------------------------------------------------ stage 4 and scoring

    def _tops(self, mode: str) -> dict[str, TopModel]:
        if mode == NON_PRIVATE:
            return {setting_name(p): FinetuneTop.from_arrays(_arrays(
                self.context.state.array_records[f"vfl.np.{setting_name(p)}"]),
                self.settings.finetune).top() for p in SETTINGS}
        arrays = _arrays(self.context.state.array_records["vfl.top.dp"])
        return {setting_name(p): TopModel(arrays[f"{setting_name(p)}.weights"].astype(float),
                                          float(arrays[f"{setting_name(p)}.bias"][0]))
                for p in SETTINGS}

    def evaluate(self) -> Message:
        """Lender: stage 4 (DP: EIV-corrected tops on the noisy embeddings) and the pooled test
        AUC/KS per setting from the clean test embeddings; only metrics leave."""
        self.require(LENDER)
        mode = _mode(self.msg, self.partner)
        self.once(f"evaluate-{mode}")  # the test labels answer one evaluation, not an oracle
        records = self.msg.content.array_records
        view, aligned_test = self.view(), self.alignment()[2]
        assert self.data.labels is not None
        test_labels = self.data.labels[self.alignment()[0]][aligned_test]
        if mode == NON_PRIVATE:
            tops = self._tops(mode)
            test = {name: {p: _arrays(records[f"test.{p}"])[name]
                           for p in PASSIVE if f"test.{p}" in records
                           and name in records[f"test.{p}"]} for name in tops}
        else:
            noise = self.msg.content.metric_records["noise-std"]
            tops = fit_private_tops(
                view.train, {p: _arrays(records[f"train.{p}"])["embeddings"] for p in PASSIVE},
                {p: float(noise[p]) for p in PASSIVE}, self.train_labels(),
                settings=self.settings, seed=self.run.seed)
            self.context.state["vfl.top.dp"] = _array_record({
                **{f"{k}.weights": t.weights for k, t in tops.items()},
                **{f"{k}.bias": np.array([t.bias]) for k, t in tops.items()}})
            test = dict.fromkeys(tops, {p: _arrays(records[f"test.{p}"])["embeddings"]
                                        for p in PASSIVE})
        metrics = setting_metrics(tops, view.test, test, test_labels)
        return self.reply(metrics=MetricRecord({f"{name}/{key}": value
                                                for name, m in metrics.items()
                                                for key, value in m.items()}))

    def score(self) -> Message:
        """Lender: the score of one customer from its columns and the partners' embeddings."""
        self.require(LENDER)
        mode = _mode(self.msg, self.partner)
        try:
            row = self.data.row_of(str(self.config["customer"]))
        except KeyError:
            raise Refusal(f"{self.name} does not know this customer") from None
        records = self.msg.content.array_records
        key = ALL_THREE if mode == NON_PRIVATE else "embeddings"
        embeddings = [_arrays(records[f"customer.{p}"])[key] for p in PASSIVE]
        value = score(self._tops(mode)[ALL_THREE], self.data.features[[row]], embeddings)
        return self.reply(metrics=MetricRecord({"score": float(value[0])}))

    def hello(self) -> Message:
        """Who this node is."""
        return self.reply(info=ConfigRecord({"party": self.name}))


HANDLERS: dict[str, Callable[[Party], Message]] = {
    "query.vfl_hello": Party.hello,
    "query.psi_open": Party.psi_open,
    "query.psi_respond": Party.psi_respond,
    "query.psi_finish": Party.psi_finish,
    "query.psi_align": Party.psi_align,
    "query.vfl_split": Party.split,
    "query.vfl_labels": Party.labels,
    "train.vfl_bottom": Party.bottom,
    "query.vfl_embed": Party.embed,
    "train.vfl_top": Party.top,
    "train.vfl_finetune": Party.finetune,
    "evaluate.vfl_score": Party.evaluate,
    "query.vfl_score": Party.score,
}


def handle(msg: Message, context: Context, overrides: dict) -> Message:
    """Run the handler of the message's type; a refusal or failure becomes an error reply that
    names only the party and the kind of failure (details stay in the party's own log)."""
    handler = HANDLERS[msg.metadata.message_type]
    try:
        return handler(Party(msg, context, overrides))
    except Refusal as refusal:
        log.warning("vertical party refuses %s: %s", msg.metadata.message_type, refusal)
        return Message(Error(code=VERTICAL_REFUSAL_CODE, reason=str(refusal)), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none leaks
        log.exception("vertical party failed in %s", msg.metadata.message_type)
        return Message(Error(code=VERTICAL_REFUSAL_CODE, reason=f"party failed ({type(exc).__name__}); "
                                                       "details are in the party's own log"),
                       reply_to=msg)


def register_vertical(app: ClientApp, overrides: dict) -> None:
    """Register every vertical message type on `app` ('<category>.<action>' routing)."""
    registrars = {"query": app.query, "train": app.train, "evaluate": app.evaluate}
    for message_type in HANDLERS:
        category, action = message_type.split(".")

        def run(msg: Message, context: Context) -> Message:
            return handle(msg, context, overrides)

        registrars[category](action)(run)
