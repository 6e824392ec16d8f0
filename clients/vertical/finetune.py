"""Non-private joint fine-tuning, each party's side: the lender's tops step by step and the
passive parties' bottoms, exact embeddings forward and exact gradients back."""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Message

from clients.vertical.base import PASSIVE_ROLE, PartyBase, array_record, arrays_of
from common.data.scenarios import LENDER
from common.protocol import (
    BATCH,
    EMBEDDINGS,
    FIT_TOPS,
    GRADS,
    INFO,
    PREVIOUS_BATCH,
    STEP,
    STEPS,
    non_private_state,
    party_record,
)
from common.vertical.finetune import FinetuneTop, finetune_batches
from common.vertical.parties import SETTINGS, passives_of, setting_name
from common.vertical.settings import non_private_seeds
from common.vertical.stages import fit_top


class FinetuneHandlers(PartyBase):
    """`train.vfl_top` (lender) and `train.vfl_finetune` (passive), non-private mode only."""

    def finetune(self) -> Message:
        """Passive, non-private: apply the lender's gradients of the last batch, then send the
        exact embeddings of the next batch (positions of its training rows)."""
        self.require(PASSIVE_ROLE)
        self.mode()
        train = self.view().train
        grads = arrays_of(self.msg.content.array_records.get(GRADS, ArrayRecord()))
        embeddings = {}
        for name in self.my_settings():
            tuner = self.tuner(name)
            if name in grads:
                tuner.backward(train[list(self.config[PREVIOUS_BATCH])], grads[name])
            if BATCH in self.config:
                embeddings[name] = tuner.forward(train[list(self.config[BATCH])])
            self.context.state[non_private_state(name)] = array_record(tuner.arrays())
        return self.reply({EMBEDDINGS: array_record(embeddings)})

    def top(self) -> Message:
        """Lender, non-private: fit the tops on the exact embeddings (`FIT_TOPS`), or one
        fine-tuning step of every setting's top; returns gradients and the next batch."""
        self.require(LENDER)
        self.mode()
        own, labels = self.view().train, self.train_labels()
        received = {k: arrays_of(r) for k, r in self.msg.content.array_records.items()}
        batches = finetune_batches(len(labels), self.settings.finetune,
                                   non_private_seeds(self.run.seed)[3])
        step = int(self.config[STEP])
        grads = {}
        for parties in SETTINGS:
            name, passive = setting_name(parties), passives_of(parties)
            if step <= FIT_TOPS:  # fit the stacked top model on the exact embeddings
                top = fit_top(own, [received[p][name] for p in passive], labels,
                              settings=self.settings.top, seed=non_private_seeds(self.run.seed)[0])
                tuner = FinetuneTop(top, self.settings.finetune)
            else:
                tuner = FinetuneTop.from_arrays(arrays_of(self.context.state.array_records[
                    non_private_state(name)]), self.settings.finetune)
                if passive:
                    batch = batches[step]
                    for p, grad in zip(passive, tuner.step(
                            own[batch], labels[batch], [received[p][name] for p in passive]),
                            strict=True):
                        grads.setdefault(p, {})[name] = grad
            self.context.state[non_private_state(name)] = array_record(tuner.arrays())
        records: dict = {party_record(GRADS, p): array_record(g) for p, g in grads.items()}
        info: dict = {STEPS: len(batches)}
        if step + 1 < len(batches):
            info[BATCH] = batches[step + 1].tolist()
        return self.reply({**records, INFO: ConfigRecord(info)})
