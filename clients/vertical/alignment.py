"""The PSI and the split, each party's side: who it is, which of its rows line up, which test."""

from __future__ import annotations

import numpy as np
from flwr.app import ConfigRecord, Message

from clients.vertical.base import PASSIVE_ROLE, PartyBase
from common.data.scenarios import LENDER, PASSIVE
from common.errors import ChannelError, PsiError, Refusal
from common.privacy.randomness import split_key
from common.protocol import (
    ALIGN_STATE,
    ALIGNED,
    ALIGNMENT_REFUSED,
    CHANNEL,
    INFO,
    NUM_ALIGNED,
    NUM_TEST,
    NUM_TRAIN,
    PARTY,
    PSI,
    PSI_FINISH,
    PSI_NOT_AUTHENTIC,
    PSI_RUN_ID,
    PSI_SIGNATURE,
    PSI_STATE,
    PSI_TRANSCRIPT,
    ROWS,
    RUN,
    SCORES_RELEASED,
    SEALED,
    STEP_PSI,
    STEP_SPLIT,
    TEST,
    TEST_POSITIONS,
    TEST_SHARE_REFUSED,
    party_record,
)
from common.vertical.channel import ChannelKeys, Channels
from common.vertical.parties import (
    keyed_test_positions,
    lender_row_order,
    split_aligned,
    split_seed,
)
from common.vertical.psi import (
    Alignment,
    LenderParty,
    PassiveParty,
    PsiMessage,
    message_from_record,
    message_to_record,
    sign_session,
    transcript_digest,
    verify_session,
)

SPLIT_MODE = ""  # the split serves every mode: its sealed payload is bound to none


def signed_record(message: PsiMessage, signature: bytes) -> ConfigRecord:
    """The `PSI` record of a blinded set or reply, with its sender's signature of the session."""
    return ConfigRecord({**message_to_record(message), PSI_SIGNATURE: signature})


class AlignmentHandlers(PartyBase):
    """`query.vfl_hello`, the PSI (`query.psi_*`) and `query.vfl_split`. The end-to-end channels
    are set up inside the PSI messages: the lender's signed channel key goes out with its blinded
    sets, each passive party's comes back with its reply. Neither end has the other's channel
    key when it must use a blinded set or reply, so each of those carries its sender's signature
    of the session (`common.vertical.psi.auth`), checked before anything is blinded or matched."""

    def authentic(
        self, keys: ChannelKeys, record: ConfigRecord, sender: str, digest: bytes
    ) -> None:
        """Refuse, with the fixed `PSI_NOT_AUTHENTIC`, unless `sender` signed `digest`: the
        session as we would have it with this message, which the coordinator relayed."""
        try:
            verify_session(keys, sender, digest, record.get(PSI_SIGNATURE))
        except PsiError as exc:
            raise Refusal(f"{self.name}: {PSI_NOT_AUTHENTIC.format(sender=sender)}") from exc

    def hello(self) -> Message:
        """Who this node is."""
        return self.reply({INFO: ConfigRecord({PARTY: self.name})})

    def psi_open(self) -> Message:
        """Lender: open one PSI session per partner; the keys stay in the state."""
        self.require(LENDER)
        self.once(STEP_PSI)
        lender = LenderParty(
            LENDER, self.data.ids, run_id=str(self.config[PSI_RUN_ID]), partners=list(PASSIVE)
        )
        keys = self.channel_keys()
        records = {}
        for p in PASSIVE:
            opening = lender.open_session(p)
            signature = sign_session(keys, lender.session_digest(p))
            records[party_record(PSI, p)] = signed_record(opening, signature)
        channels = Channels(self.name, lender.run_id)
        signed = channels.start(keys)
        self.save_channels(channels)
        self.context.state[PSI_STATE] = ConfigRecord({**lender.session_state(), RUN: lender.run_id})
        return self.reply({**records, CHANNEL: ConfigRecord({self.name: signed})})

    def psi_respond(self) -> Message:
        """Passive: blind our IDs and the lender's once more, only if the lender signed that
        blinded set (a made-up one would make our reply a membership oracle); keep our secret
        order."""
        self.require(PASSIVE_ROLE)
        record = self.msg.content.config_records.get(PSI)
        if record is None:
            raise Refusal(f"{self.name}: no blinded set to answer")
        opening = message_from_record(dict(record))
        keys = self.channel_keys()
        self.authentic(keys, record, LENDER, transcript_digest(opening))
        self.once(STEP_PSI)
        party = PassiveParty(self.name, self.data.ids, run_id=opening.run_id, lender=LENDER)
        channels = Channels(self.name, opening.run_id)
        signed = channels.start(keys)
        self.connect(channels, [LENDER], keys)
        answer = party.respond(opening)
        self.context.state[PSI_STATE] = ConfigRecord(
            {ROWS: party.sent_order(), PSI_TRANSCRIPT: party.transcript, RUN: opening.run_id}
        )
        return self.reply(
            {
                PSI: signed_record(answer, sign_session(keys, party.transcript)),
                CHANNEL: ConfigRecord({self.name: signed}),
            }
        )

    def connect(self, channels: Channels, peers: list[str], keys: ChannelKeys) -> None:
        """Open the channels to `peers` from their signed keys in this message's `CHANNEL`
        record (refused unless each verifies), then forget our ephemeral key."""
        signed = self.msg.content.config_records.get(CHANNEL, ConfigRecord())
        for peer in peers:
            if not isinstance(signed.get(peer), bytes):
                raise Refusal(f"{self.name}: no channel key of {peer}")
            try:
                channels.connect(peer, bytes(signed[peer]), keys)
            except ChannelError as exc:
                raise Refusal(f"{self.name}: {exc}") from exc
        channels.forget_ephemeral()
        self.save_channels(channels)

    def psi_finish(self) -> Message:
        """Lender: match the replies, order the aligned rows by its own row, split them."""
        self.require(LENDER)
        state = dict(self.context.state.config_records[PSI_STATE])
        lender = LenderParty(LENDER, self.data.ids, run_id=str(state[RUN]), partners=list(PASSIVE))
        lender.restore_sessions(state)
        keys = self.channel_keys()
        records = self.msg.content.config_records
        replies = []
        for p in PASSIVE:  # every reply checked before any is matched
            record = records.get(party_record(PSI, p))
            if record is None:
                raise Refusal(f"{self.name}: no PSI reply of {p}")
            reply = message_from_record(dict(record))
            self.authentic(keys, record, p, transcript_digest(reply, lender.session_digest(p)))
            replies.append(reply)
        self.connect(self.channels(), list(PASSIVE), keys)
        for reply in replies:
            lender.receive(reply)
        alignments = lender.finish()
        order = lender_row_order(lender.aligned_rows or [])
        aligned = np.asarray(lender.aligned_rows, dtype=int)[order]
        test = self._test_positions([self.data.ids[i] for i in aligned])
        del self.context.state[PSI_STATE]  # the session keys are spent
        self.context.state[ALIGN_STATE] = ConfigRecord(
            {ALIGNED: aligned.tolist(), TEST: test.tolist(), RUN: lender.run_id}
        )
        sent = [
            Alignment(
                a.run_id, a.sender, a.recipient, tuple(int(i) for i in np.asarray(a.indices)[order])
            )
            for a in alignments
        ]
        # sealed and authenticated: the coordinator can neither read nor change what the lender
        # tells its partners, whether it scores customers included, nor (by the digest of each
        # partner's PSI session) the alignment it relays in clear
        scores = self.node.release_scores and self.node.max_scored_customers > 0
        split = {
            TEST_POSITIONS: test,
            NUM_ALIGNED: np.array(len(aligned)),
            SCORES_RELEASED: np.array(int(scores)),
        }
        splits = {
            a.recipient: {**split, PSI_TRANSCRIPT: np.frombuffer(lender.transcript(a), np.uint8)}
            for a in sent
        }
        relayed = {party_record(PSI, a.recipient): ConfigRecord(message_to_record(a)) for a in sent}
        return self.reply(
            {
                **relayed,
                INFO: ConfigRecord({NUM_ALIGNED: len(aligned)}),
                SEALED: self.sealed_for(splits, mode=SPLIT_MODE),
            }
        )

    def _test_positions(self, customers: list[str]) -> np.ndarray:
        """Lender: which aligned positions are test customers, by its own node config's test
        fraction. Deployed, by a key derived from its signing key, so the coordinator's seed
        moves nothing; simulated, by the run seed (a reproducible analysis)."""
        fraction, num_aligned = self.node.test_fraction, len(customers)
        if self.partner.deployed:
            key = split_key(partner=self.name, signing_key=self.partner.signing_key, deployed=True)
            test = keyed_test_positions(customers, test_fraction=fraction, key=key)
        else:
            _, test = split_aligned(
                num_aligned, test_fraction=fraction, seed=split_seed(self.run.seed)
            )
        if not 0 < len(test) < num_aligned:
            raise Refusal(
                f"{self.name}: test fraction {fraction:g} of {num_aligned} aligned customers "
                "leaves no training or no test customer"
            )
        return test

    def psi_align(self) -> Message:
        """Passive: map the lender's positions back to our own rows. The alignment came in
        clear through the coordinator: it is kept with the digest of our PSI session and used
        only once `split` found that digest in the lender's sealed split."""
        self.require(PASSIVE_ROLE)
        record = self.context.state.config_records.get(PSI_STATE)
        if record is None or PSI not in self.msg.content.config_records:
            raise Refusal(f"{self.name}: no PSI session to align, or no alignment")
        state = dict(record)
        party = PassiveParty(self.name, self.data.ids, run_id=str(state[RUN]), lender=LENDER)
        party.restore_sent_order(state[ROWS], bytes(state[PSI_TRANSCRIPT]))
        aligned = party.align(message_from_record(dict(self.msg.content.config_records[PSI])))
        del self.context.state[PSI_STATE]
        self.context.state[ALIGN_STATE] = ConfigRecord(
            {ALIGNED: aligned, PSI_TRANSCRIPT: party.transcript, RUN: party.run_id}
        )
        return self.reply({INFO: ConfigRecord({NUM_ALIGNED: len(aligned)})})

    def split(self) -> Message:
        """Passive: which of our aligned rows are test rows (positions only, at most its
        `max-test-fraction`), and whether the lender scores customers in this run."""
        self.require(PASSIVE_ROLE)
        state = self.context.state.config_records.get(ALIGN_STATE)
        if state is None:
            raise Refusal(f"{self.name}: no PSI alignment yet")
        self.once(STEP_SPLIT)
        split = self.open_from(LENDER, [PSI_FINISH], mode=SPLIT_MODE)[0]
        vouched = np.asarray(split.get(PSI_TRANSCRIPT, np.zeros(0, np.uint8)), np.uint8)
        if vouched.tobytes() != bytes(state[PSI_TRANSCRIPT]):
            del self.context.state[ALIGN_STATE]  # no later stage may use these rows
            raise Refusal(f"{self.name}: {ALIGNMENT_REFUSED}")
        test = [int(i) for i in np.asarray(split[TEST_POSITIONS]).reshape(-1)]
        aligned = len(state[ALIGNED])
        if (
            int(split[NUM_ALIGNED]) != aligned
            or len(set(test)) != len(test)
            or not test
            or any(not 0 <= i < aligned for i in test)
        ):
            raise Refusal(
                f"{self.name}: the split does not fit our alignment (distinct "
                f"positions among its {aligned} rows, at least one)"
            )
        # The test customers' clean embeddings leave without DP: the share is capped here,
        # whatever the lender (or a coordinator's run config) chose.
        cap = self.node.max_test_fraction
        if len(test) > cap * aligned:
            share = TEST_SHARE_REFUSED.format(num_test=len(test), num_aligned=aligned, cap=cap)
            raise Refusal(f"{self.name}: {share}")
        state[TEST] = test
        state[SCORES_RELEASED] = bool(int(np.asarray(split.get(SCORES_RELEASED, 0))))
        return self.reply(
            {INFO: ConfigRecord({NUM_TRAIN: len(state[ALIGNED]) - len(test), NUM_TEST: len(test)})}
        )
