"""The parties' end-to-end channel: only the two parties read a sealed payload, and a relay can
neither substitute a key nor alter, redirect, replay or reorder a sealed message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from common.errors import ChannelError
from common.privacy.crypto import generate_signing_key, write_key_pair
from common.vertical.channel import (
    HEADER_BYTES,
    SIGNED_KEY_BYTES,
    ChannelKeys,
    Channels,
    load_channel_keys,
    pack_arrays,
    unpack_arrays,
)

PARTIES = ("lender", "ecommerce", "bank")
RUN = "run-1"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ChannelKeys]:
    """Each party's channel keys from a federation's key directory (plus a coordinator key)."""
    directory = tmp_path_factory.mktemp("keys")
    for name in (*PARTIES, "coordinator"):
        write_key_pair(generate_signing_key(), directory, name)
    return {
        name: load_channel_keys(name, str(directory / f"{name}.key"), str(directory), PARTIES)
        for name in (*PARTIES, "coordinator")
    }


def _connected(keys: dict[str, ChannelKeys]) -> dict[str, Channels]:
    """The lender connected to both passive parties, as the PSI messages set it up."""
    channels = {p: Channels(p, RUN) for p in PARTIES}
    signed = {p: channels[p].start(keys[p]) for p in PARTIES}
    for passive in PARTIES[1:]:
        channels[passive].connect("lender", signed["lender"], keys[passive])
        channels[passive].forget_ephemeral()
        channels["lender"].connect(passive, signed[passive], keys["lender"])
    channels["lender"].forget_ephemeral()
    return channels


def test_a_sealed_payload_opens_only_for_its_recipient_as_sent(keys) -> None:
    channels = _connected(keys)
    labels = np.array([0.3, -1.2, 0.9])
    sealed = channels["lender"].seal_arrays(
        "bank", {"labels": labels, "customer": "cust-7"}, stage="query.vfl_labels", mode="dp"
    )
    opened = channels["bank"].open_arrays("lender", sealed, stage="query.vfl_labels", mode="dp")
    np.testing.assert_array_equal(opened["labels"], labels)
    assert str(opened["customer"]) == "cust-7"
    # the relay sees neither the values nor the packed plaintext
    assert labels.tobytes() not in sealed and b"cust-7" not in sealed
    assert pack_arrays({"labels": labels}).startswith(b"PK\x03\x04")  # a plain archive...
    assert not sealed[HEADER_BYTES:].startswith(b"PK\x03\x04")  # ...is not what travels


def test_both_directions_work_and_the_state_round_trips(keys) -> None:
    channels = _connected(keys)
    restored = Channels.from_state(channels["ecommerce"].to_state())
    sealed = restored.seal("lender", b"embeddings", stage="train.vfl_bottom", mode="dp")
    assert (
        channels["lender"].open_sealed("ecommerce", sealed, stage="train.vfl_bottom", mode="dp")
        == b"embeddings"
    )
    assert Channels.from_state(channels["lender"].to_state()) == channels["lender"]
    assert channels["lender"].received["ecommerce"] == 1


@pytest.mark.parametrize("forger", ["coordinator", "bank"])
def test_a_key_signed_by_anyone_but_the_party_is_refused(keys, forger: str) -> None:
    """A coordinator (or another party) substituting its own key for the lender's."""
    passive = Channels("ecommerce", RUN)
    passive.start(keys["ecommerce"])
    forged = Channels("lender", RUN).start(
        ChannelKeys("lender", keys[forger].signing_key, keys[forger].trusted)
    )
    with pytest.raises(ChannelError, match="not signed by lender's ledger key"):
        passive.connect("lender", forged, keys["ecommerce"])


def test_a_key_of_another_run_or_party_or_malformed_is_refused(keys) -> None:
    other_run = Channels("lender", "run-0").start(keys["lender"])
    passive = Channels("ecommerce", RUN)
    passive.start(keys["ecommerce"])
    with pytest.raises(ChannelError, match="not signed"):
        passive.connect("lender", other_run, keys["ecommerce"])
    bank_key = Channels("bank", RUN).start(keys["bank"])
    with pytest.raises(ChannelError, match="not signed"):  # the bank's key passed off as lender's
        passive.connect("lender", bank_key, keys["ecommerce"])
    with pytest.raises(ChannelError, match="malformed"):
        passive.connect("lender", b"\x00" * (SIGNED_KEY_BYTES - 1), keys["ecommerce"])
    with pytest.raises(ChannelError, match="no public key"):
        passive.connect("coordinator", bank_key, keys["ecommerce"])


def test_a_low_order_key_is_refused(keys) -> None:
    """A correctly signed all-zero X25519 key (only its own party could sign it) still fails."""
    from common.privacy.crypto import sign
    from common.vertical.channel import _key_statement

    zero = bytes(32)
    signed = zero + sign(keys["lender"].signing_key, _key_statement(RUN, "lender", zero))
    passive = Channels("ecommerce", RUN)
    passive.start(keys["ecommerce"])
    with pytest.raises(ChannelError, match="low order"):
        passive.connect("lender", signed, keys["ecommerce"])


def test_a_channel_opens_once_per_peer_and_starts_once(keys) -> None:
    channels = _connected(keys)
    with pytest.raises(ChannelError, match="already started"):
        channels["bank"].start(keys["bank"])
    fresh = Channels("lender", RUN)
    signed = fresh.start(keys["lender"])
    with pytest.raises(ChannelError, match="no ephemeral key"):
        channels["bank"].connect("lender", signed, keys["bank"])


def test_altered_redirected_or_restaged_messages_are_refused(keys) -> None:
    channels = _connected(keys)
    sealed = channels["lender"].seal("bank", b"labels", stage="query.vfl_labels", mode="dp")
    altered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    with pytest.raises(ChannelError, match="failed authentication"):
        channels["bank"].open_sealed("lender", altered, stage="query.vfl_labels", mode="dp")
    with pytest.raises(ChannelError, match="failed authentication"):  # meant for the bank
        channels["ecommerce"].open_sealed("lender", sealed, stage="query.vfl_labels", mode="dp")
    with pytest.raises(ChannelError, match="failed authentication"):  # another stage
        channels["bank"].open_sealed("lender", sealed, stage="query.vfl_score", mode="dp")
    with pytest.raises(ChannelError, match="failed authentication"):  # another mode
        channels["bank"].open_sealed("lender", sealed, stage="query.vfl_labels", mode="non-private")
    with pytest.raises(ChannelError, match="no channel to ecommerce"):  # no such channel
        channels["bank"].open_sealed("ecommerce", sealed, stage="query.vfl_labels", mode="dp")
    with pytest.raises(ChannelError, match="malformed"):
        channels["bank"].open_sealed("lender", sealed[:HEADER_BYTES], stage="x", mode="dp")
    # none of the failures consumed the genuine message
    assert (
        channels["bank"].open_sealed("lender", sealed, stage="query.vfl_labels", mode="dp")
        == b"labels"
    )


def test_replayed_or_reordered_messages_are_refused(keys) -> None:
    channels = _connected(keys)
    first, second = (
        channels["bank"].seal("lender", payload, stage="query.vfl_embed", mode="dp")
        for payload in (b"one", b"two")
    )
    assert (
        channels["lender"].open_sealed("bank", second, stage="query.vfl_embed", mode="dp") == b"two"
    )
    for stale in (second, first):  # replay, then the older one after the newer
        with pytest.raises(ChannelError, match="replayed or out of order"):
            channels["lender"].open_sealed("bank", stale, stage="query.vfl_embed", mode="dp")


def test_payloads_are_named_arrays_never_pickles() -> None:
    arrays = {"embeddings": np.arange(4.0), "batch": np.array([3, 1]), "customer": "cust-1"}
    unpacked = unpack_arrays(pack_arrays(arrays))
    assert set(unpacked) == set(arrays)
    np.testing.assert_array_equal(unpacked["batch"], [3, 1])
    with pytest.raises(ChannelError, match="named arrays"):
        unpack_arrays(pack_arrays({"evil": np.array([{"a": 1}], dtype=object)}))
    with pytest.raises(ChannelError, match="named arrays"):
        unpack_arrays(b"not an archive")


def test_missing_or_unreadable_keys_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ChannelError, match="has no channel keys"):
        load_channel_keys("bank", "", str(tmp_path), PARTIES)
    with pytest.raises(ChannelError, match="unreadable"):
        load_channel_keys("bank", str(tmp_path / "bank.key"), str(tmp_path), PARTIES)
