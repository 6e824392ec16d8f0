"""Non-private joint fine-tuning, each party's side: the lender's tops step by step and the
passive parties' bottoms, exact embeddings forward and exact gradients back."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Message

from clients.vertical.base import PASSIVE_ROLE, PartyBase, array_record, arrays_of
from common.data.scenarios import LENDER, PASSIVE
from common.protocol import (
    BATCH,
    FIT_TOPS,
    INFO,
    PREVIOUS_BATCH,
    SEALED,
    STEP,
    STEPS,
    VFL_BOTTOM,
    VFL_FINETUNE,
    VFL_TOP,
    non_private_state,
)
from common.vertical.finetune import FinetuneTop, finetune_batches
from common.vertical.parties import SETTINGS, passives_of, setting_name
from common.vertical.settings import non_private_seeds
from common.vertical.stages import fit_top


class FinetuneHandlers(PartyBase):
    """`train.vfl_top` (lender) and `train.vfl_finetune` (passive), non-private mode only.
    Embeddings, gradients and batch positions all travel sealed."""

    def finetune(self) -> Message:
        """Passive, non-private: apply the lender's gradients of the last batch, then send the
        exact embeddings of the next batch (positions of its training rows)."""
        self.require(PASSIVE_ROLE)
        mode = self.mode()
        train = self.view().train
        sent = self.open_from(LENDER, [VFL_TOP], mode=mode)[0]
        embeddings = {}
        for name in self.my_settings():
            tuner = self.tuner(name)
            if name in sent:
                tuner.backward(train[sent[PREVIOUS_BATCH]], sent[name])
            if BATCH in sent:
                embeddings[name] = tuner.forward(train[sent[BATCH]])
            self.context.state[non_private_state(name)] = array_record(tuner.arrays())
        return self.reply({SEALED: self.sealed_for({LENDER: embeddings}, mode=mode)})

    def top(self) -> Message:
        """Lender, non-private: fit the tops on the exact embeddings (`FIT_TOPS`), or one
        fine-tuning step of every setting's top; returns gradients and the next batch."""
        self.require(LENDER)
        mode = self.mode()
        own, labels = self.view().train, self.train_labels()
        step = int(self.config[STEP])
        stage = VFL_BOTTOM if step <= FIT_TOPS else VFL_FINETUNE
        received = {p: self.open_from(p, [stage], mode=mode)[0] for p in PASSIVE}
        batches = finetune_batches(
            len(labels), self.settings.finetune, non_private_seeds(self.run.seed)[3]
        )
        grads: dict[str, dict[str, np.ndarray]] = {p: {} for p in PASSIVE}
        for parties in SETTINGS:
            name, passive = setting_name(parties), passives_of(parties)
            if step <= FIT_TOPS:  # fit the stacked top model on the exact embeddings
                top = fit_top(
                    own,
                    [received[p][name] for p in passive],
                    labels,
                    settings=self.settings.top,
                    seed=non_private_seeds(self.run.seed)[0],
                )
                tuner = FinetuneTop(top, self.settings.finetune)
            else:
                tuner = FinetuneTop.from_arrays(
                    arrays_of(self.context.state.array_records[non_private_state(name)]),
                    self.settings.finetune,
                )
                if passive:
                    batch = batches[step]
                    for p, grad in zip(
                        passive,
                        tuner.step(own[batch], labels[batch], [received[p][name] for p in passive]),
                        strict=True,
                    ):
                        grads[p][name] = grad
            self.context.state[non_private_state(name)] = array_record(tuner.arrays())
        positions = {}  # the batch these gradients are for, and the next one
        if step > FIT_TOPS:
            positions[PREVIOUS_BATCH] = batches[step]
        if step + 1 < len(batches):
            positions[BATCH] = batches[step + 1]
        sealed = self.sealed_for({p: {**g, **positions} for p, g in grads.items()}, mode=mode)
        return self.reply({SEALED: sealed, INFO: ConfigRecord({STEPS: len(batches)})})
