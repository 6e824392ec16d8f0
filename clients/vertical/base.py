"""What every vertical handler stands on: the party's settings, own table and Context state."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.context import read_config
from common.config import PartnerConfig, RunConfig
from common.data.scenarios import LENDER, PARTIES
from common.data.spec import load_vertical_spec
from common.data.vertical_spec import VerticalSpec
from common.errors import ChannelError, DataValidationError, FedcreditError, Refusal
from common.privacy.accounting import within_budget
from common.privacy.crypto import load_private_key
from common.privacy.randomness import noise_seed
from common.protocol import (
    ALIGN_STATE,
    ALIGNED,
    CHANNEL_STATE,
    CONFIG,
    DONE_STATE,
    DP,
    MODE,
    NON_PRIVATE,
    RUN,
    SEALED,
    TEST,
    non_private_state,
)
from common.vertical.channel import ChannelKeys, Channels, load_channel_keys
from common.vertical.finetune import FinetuneBottom
from common.vertical.parties import (
    SETTINGS,
    PartyData,
    PartyView,
    load_party,
    load_party_csv,
    party_view,
    passives_of,
    setting_name,
)
from common.vertical.releases import Release, releases_epsilon, write_ledger
from common.vertical.settings import VerticalNodeConfig, VerticalSettings

PASSIVE_ROLE = "passive"  # the role of every party but the lender
ID_COLUMN = "id-column"  # node config key of a deployed vertical party: its CSV's ID column

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def own_data(party: str, seed: int) -> PartyData:
    """This party's table in the bundled scenario, cached per process (it is read-only)."""
    return load_party(party, seed)


def _stamp(*paths: str | Path) -> tuple[tuple[int, int], ...]:
    """(mtime, size) of each file, so that a cache keyed on them notices an edited file."""
    stamps = []
    for path in paths:
        try:
            stat = Path(path).stat()
            stamps.append((stat.st_mtime_ns, stat.st_size))
        except OSError:
            stamps.append((0, 0))
    return tuple(stamps)


@lru_cache(maxsize=4)
def _own_csv(party: str, data: str, schema: str, id_column: str, where: str,
             _stamps: tuple[tuple[int, int], ...]) -> PartyData:
    return load_party_csv(party, data, schema, id_column, where=where)


@lru_cache(maxsize=4)
def _vertical_spec(path: str, _stamps: tuple[tuple[int, int], ...]) -> VerticalSpec:
    return load_vertical_spec(path)


def party_data(run: RunConfig, partner: PartnerConfig) -> PartyData:
    """This party's own table, cached per process while its files are unchanged:

    - deployed: its own CSV (node config `data-path`), schema (`schema-path`) and customer-ID
      column (`id-column`);
    - simulated on a vertical data spec (run config `data-spec`): its `[parties.<party>]` entry;
    - otherwise the bundled scenario credit_data_vertical (`own_data`).
    """
    if partner.deployed:
        if not partner.id_column:
            raise DataValidationError(
                f"node config of vertical party {partner.partner!r} lacks '{ID_COLUMN}' (the "
                f"column of its CSV at data-path holding the customer IDs the PSI aligns on)")
        paths = (partner.data_path, partner.schema_path)
        return _own_csv(partner.partner, *paths, partner.id_column,
                        f"node config of vertical party {partner.partner!r}", _stamp(*paths))
    if run.data_spec:
        spec = _vertical_spec(run.data_spec, _stamp(run.data_spec))
        source = spec.party(partner.partner)
        paths = (str(source.data), str(source.schema))
        return _own_csv(partner.partner, *paths, source.id_column,
                        f"{spec.source}: parties.{partner.partner}", _stamp(*paths))
    return own_data(partner.partner, run.seed)


def arrays_of(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The numpy arrays of an ArrayRecord, by name."""
    return {k: a.numpy() for k, a in record.items()}


def array_record(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    """An ArrayRecord holding `arrays`."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


def check_mode(msg: Message, partner: PartnerConfig) -> str:
    """The message's mode, refused when unknown or when this party may not run it."""
    mode = str(msg.content.config_records.get(CONFIG, ConfigRecord()).get(MODE, DP))
    if mode not in (DP, NON_PRIVATE):
        raise Refusal(f"unknown mode {mode!r}")
    if mode == NON_PRIVATE and partner.deployed:
        raise Refusal("a deployed party never runs the non-private mode")
    if mode == DP and not partner.private:
        raise Refusal("this party has no privacy budget: the DP mode needs one")
    return mode


class PartyBase:
    """One party answering one message: its settings (read once from the Context), its own
    table, and the state it keeps in the Context between messages."""

    def __init__(self, msg: Message, context: Context, overrides: dict) -> None:
        self.msg, self.context = msg, context
        self.run, self.partner = read_config(context, overrides)
        self.name = self.partner.partner
        try:
            self.data = party_data(self.run, self.partner)
        except FedcreditError as exc:  # bad data, schema or spec: no traceback, no data leaves
            log.error("vertical party %s cannot use its own table: %s", self.name, exc)
            detail = "details are in its own log" if self.partner.deployed else str(exc)
            raise Refusal(f"{self.name}: its own table failed validation ({detail})") from None
        self.settings = VerticalSettings.from_config(self.run, self.partner)
        self.node = VerticalNodeConfig.from_node_config(
            dict(context.node_config), self.run, self.partner
        )

    @property
    def config(self) -> ConfigRecord:
        """The message's `config` record."""
        return self.msg.content.config_records.get(CONFIG, ConfigRecord())

    def mode(self) -> str:
        """The message's mode (see `check_mode`)."""
        return check_mode(self.msg, self.partner)

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
        done = self.context.state.config_records.get(DONE_STATE, ConfigRecord())
        if step in done:
            raise Refusal(f"{self.name}: {step} was already done in this run")
        done[step] = True
        self.context.state[DONE_STATE] = done

    def reply(self, records: Mapping[str, ConfigRecord | ArrayRecord | MetricRecord]) -> Message:
        """A reply carrying `records`, by name."""
        return Message(content=RecordDict(dict(records)), reply_to=self.msg)

    # ------------------------------------------------------------------ end-to-end channels

    def channel_keys(self) -> ChannelKeys:
        """This party's signing key and the federation's public keys (see `VerticalNodeConfig`)."""
        try:
            return load_channel_keys(
                self.name, self.node.signing_key, self.node.federation_keys, PARTIES
            )
        except ChannelError as exc:
            raise Refusal(str(exc)) from exc

    def channels(self) -> Channels:
        """This party's channels of this run, from its Context state."""
        state = self.context.state.config_records.get(CHANNEL_STATE)
        if state is None:
            raise Refusal(f"{self.name}: no end-to-end channel in this run yet")
        return Channels.from_state(dict(state))

    def save_channels(self, channels: Channels) -> None:
        """Keep the channels' keys and counters in the Context state."""
        self.context.state[CHANNEL_STATE] = ConfigRecord(channels.to_state())

    def sealed_for(
        self, payloads: Mapping[str, Mapping[str, np.ndarray | str]], *, mode: str
    ) -> ConfigRecord:
        """The `SEALED` record of a reply: each recipient's named arrays, sealed as this
        message's type and `mode`."""
        channels = self.channels()
        stage = self.msg.metadata.message_type
        try:
            record = ConfigRecord(
                {
                    recipient: [channels.seal_arrays(recipient, arrays, stage=stage, mode=mode)]
                    for recipient, arrays in payloads.items()
                }
            )
        except ChannelError as exc:
            raise Refusal(f"{self.name}: {exc}") from exc
        self.save_channels(channels)
        return record

    def open_from(
        self, sender: str, stages: Sequence[str], *, mode: str
    ) -> list[dict[str, np.ndarray]]:
        """The payloads `sender` sealed for this party, one per stage (the message type it was
        sealed in), in order; refused unless each opens as that stage and mode."""
        blobs = self.msg.content.config_records.get(SEALED, ConfigRecord()).get(sender)
        if not isinstance(blobs, list) or len(blobs) != len(stages):
            raise Refusal(f"{self.name}: expected {len(stages)} sealed payload(s) from {sender}")
        channels = self.channels()
        try:
            payloads = [
                channels.open_arrays(sender, bytes(blob), stage=stage, mode=mode)
                for blob, stage in zip(blobs, stages, strict=True)
            ]
        except ChannelError as exc:
            raise Refusal(f"{self.name}: {exc}") from exc
        self.save_channels(channels)
        return payloads

    # ------------------------------------------------------------------ alignment state

    def alignment(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        """(aligned own rows, train positions, test positions, PSI run id) from the state."""
        state = self.context.state.config_records.get(ALIGN_STATE)
        if state is None or TEST not in state:
            raise Refusal(f"{self.name}: no PSI alignment and split yet")
        aligned = np.asarray(state[ALIGNED], dtype=int)
        test = np.asarray(state[TEST], dtype=int)
        train = np.setdiff1d(np.arange(len(aligned)), test)
        return aligned, train, test, str(state[RUN])

    def view(self) -> PartyView:
        """This party's aligned training and test rows."""
        aligned, train, test, _ = self.alignment()
        return party_view(self.data, aligned, train, test)

    def train_labels(self) -> np.ndarray:
        """Lender: labels of its aligned training rows."""
        aligned, train, _, _ = self.alignment()
        assert self.data.labels is not None
        return self.data.labels[aligned][train]

    # ------------------------------------------------------------------ releases

    def record_releases(self, releases: list[Release], budget: float) -> float:
        """Append the releases to this party's signed ledger (refused over budget); ε spent."""
        _, _, _, run_id = self.alignment()
        if self.partner.ledger_path:
            write_ledger(
                Path(self.partner.ledger_path),
                load_private_key(Path(self.partner.signing_key)),
                self.name,
                run_id,
                releases,
                epsilon_budget=budget,
                delta=self.settings.delta,
            )
        spent = releases_epsilon(releases, self.settings.delta)
        if not within_budget(spent, budget):
            raise Refusal(f"{self.name}: the releases would spend more than its budget")
        return spent

    # ------------------------------------------------------------------ non-private state

    def my_settings(self) -> list[str]:
        """Passive: the settings it is in (their non-private bottoms are its own)."""
        return [setting_name(p) for p in SETTINGS if self.name in p and passives_of(p)]

    def tuner(self, setting: str) -> FinetuneBottom:
        """Passive: its non-private bottom of `setting`, with its fine-tuning state."""
        return FinetuneBottom.from_arrays(
            arrays_of(self.context.state.array_records[non_private_state(setting)]),
            self.settings.finetune,
        )
