"""Vertical FL core: scenario columns, calibration, releases, ledgers + audit, no raw features."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from common.data.scenarios import LENDER, PARTIES, PARTY_COLUMNS, PASSIVE
from common.data.tables import load_bundled
from common.learning.training import TrainSettings
from common.privacy.accounting import (
    CONVERSION,
    SubsampledGaussianEvent,
    calibrate_noise_multiplier,
    composed_epsilon,
)
from common.privacy.audit import verify
from common.privacy.crypto import generate_signing_key, write_key_pair
from common.privacy.ledger import ledger_event
from common.vertical.in_memory import run_vertical_in_memory
from common.vertical.parties import (
    SETTINGS,
    PartyView,
    VerticalScenario,
    load_vertical_scenario,
    party_feature_indices,
    setting_name,
    split_aligned,
)
from common.vertical.releases import (
    RELEASE_TOLERANCE,
    STAGE_BOTTOM,
    STAGE_EMBEDDINGS,
    STAGE_LABELS,
    calibrate_passive_releases,
    gaussian_release_event,
    plan_mechanisms,
    release_embeddings,
    release_noisy_labels,
    releases_epsilon,
)
from common.vertical.settings import VerticalSettings
from common.vertical.stages import eiv_correct

DELTA = 1e-5
RELEASED_KINDS = {"noisy-labels", "embeddings", "scoring-embeddings"}


def synthetic_scenario(seed: int = 0, n: int = 600) -> VerticalScenario:
    """Three parties' columns of the same customers, with a label that depends on all three."""
    rng = np.random.default_rng(seed)
    widths = {LENDER: 3, "ecommerce": 4, "bank": 5}
    blocks = {p: rng.uniform(-1, 1, size=(n, w)) for p, w in widths.items()}
    logit = sum(blocks[p] @ rng.normal(0, 1.2, size=w) for p, w in widths.items()) - 0.8
    labels = (rng.uniform(size=n) < 1 / (1 + np.exp(-logit))).astype(np.float64)
    train, test = split_aligned(n, test_fraction=0.25, seed=seed)
    views = {p: PartyView(p, tuple(f"{p}{i}" for i in range(widths[p])), b[train], b[test])
             for p, b in blocks.items()}
    return VerticalScenario(seed=seed, views=views, train_labels=labels[train],
                            test_labels=labels[test], known_customers=dict.fromkeys(PARTIES, n),
                            psi_run_id="synthetic-run")


FAST = VerticalSettings(bottom=TrainSettings(epochs=2.0, batch_size=64, learning_rate=0.05),
                        top=TrainSettings(epochs=10.0, batch_size=64, learning_rate=0.05),
                        finetune=TrainSettings(epochs=5.0, batch_size=64, learning_rate=0.01))


def make_keys(root: Path) -> tuple[dict, Path]:
    """Each party's signing key, and a keys/ folder of their public keys (what an auditor gets)."""
    keys = {p: generate_signing_key() for p in PARTIES}
    keys_dir = root / "keys"
    keys_dir.mkdir(parents=True)
    for party, key in keys.items():
        write_key_pair(key, root / "secrets", party)
        shutil.copy(root / "secrets" / f"{party}.pub", keys_dir / f"{party}.pub")
    return keys, keys_dir


@pytest.fixture(scope="module")
def synthetic_run(tmp_path_factory: pytest.TempPathFactory):
    """One DP + non-private run on synthetic data, with ledgers written."""
    root = tmp_path_factory.mktemp("vertical")
    keys, keys_dir = make_keys(root)
    scenario = synthetic_scenario()
    result = run_vertical_in_memory(0, FAST, scenario=scenario, ledger_dir=root / "ledgers",
                                    keys=keys, transcript_finetune=True)
    return scenario, result, keys_dir


def test_party_columns_partition_the_credit_data_features() -> None:
    _, schema = load_bundled("credit_data")
    positions = party_feature_indices(schema)
    flat = sorted(i for cols in positions.values() for i in cols)
    # every feature read from a CSV column, exactly one party; a declared ratio reads two
    # parties' columns, so no party holds it
    read = [i for i, column in enumerate(schema.feature_columns) if not column.derived]
    assert flat == read and len(read) < schema.num_features
    for party, columns in PARTY_COLUMNS.items():
        names = {schema.feature_names[i].split("=")[0].split("__")[0] for i in positions[party]}
        assert names == set(columns)
    with pytest.raises(ValueError, match="no feature columns"):
        party_feature_indices(schema, {LENDER: ("Nope",)})


def test_split_aligned_is_seeded_and_disjoint() -> None:
    train, test = split_aligned(100, test_fraction=0.25, seed=3)
    assert len(test) == 25 and not set(train) & set(test)
    assert sorted([*train, *test]) == list(range(100))
    again = split_aligned(100, test_fraction=0.25, seed=3)
    assert np.array_equal(train, again[0])


def _release_noise(target: float, prior: list[SubsampledGaussianEvent]) -> float:
    return calibrate_noise_multiplier(target_epsilon=target, delta=DELTA, sample_rate=1.0,
                                      steps=1, prior=prior, tolerance=RELEASE_TOLERANCE)


def test_calibrated_release_spends_the_budget_exactly_with_prior_events() -> None:
    prior = [SubsampledGaussianEvent(0.1, 3.8, 50)]
    z = _release_noise(3.0, prior)
    spent = composed_epsilon([*prior, gaussian_release_event(z)], delta=DELTA,
                             conversion=CONVERSION)
    assert 2.99 < spent <= 3.0
    assert _release_noise(3.0, []) < z  # the prior costs noise
    with pytest.raises(ValueError, match="no budget left"):
        _release_noise(0.1, prior)


def test_passive_releases_spend_the_stage2_share_then_the_rest() -> None:
    settings = VerticalSettings(epsilon=3.0, bottom_epsilon=1.0, embedding_clip=0.5,
                                bottom_clip_norm=2.0)
    bottom, embeddings = calibrate_passive_releases(5000, settings)
    assert bottom.sample_rate == pytest.approx(settings.bottom.batch_size / 5000)
    assert bottom.clipping_norm == 2.0
    assert 0.99 < composed_epsilon([bottom], delta=settings.delta) <= 1.0
    assert (embeddings.sample_rate, embeddings.steps, embeddings.clipping_norm) == (1.0, 1, 0.5)
    assert embeddings.noise_multiplier == _release_noise(3.0, [bottom])
    assert 2.99 < composed_epsilon([bottom, embeddings], delta=settings.delta) <= 3.0


def test_plan_mechanisms_merges_equal_parties_and_names_differing_ones() -> None:
    labels = gaussian_release_event(1.7)
    same = SubsampledGaussianEvent(0.25, 3.0, 40)
    mechanisms = plan_mechanisms(labels, {"ecommerce": same, "bank": same},
                                 dict.fromkeys(("ecommerce", "bank"), gaussian_release_event(1.5)))
    assert list(mechanisms.items()) == [
        ("label_noise_multiplier", 1.7), ("bottom_sigma", 3.0), ("bottom_sample_rate", 0.25),
        ("bottom_steps", 40), ("embedding_noise_multiplier", 1.5)]
    differing = plan_mechanisms(labels, {"ecommerce": same,
                                         "bank": SubsampledGaussianEvent(0.25, 4.0, 40)},
                                {"ecommerce": gaussian_release_event(1.5),
                                 "bank": gaussian_release_event(1.6)})
    assert list(differing) == [
        "label_noise_multiplier", "bottom_sigma[ecommerce]", "bottom_sigma[bank]",
        "bottom_sample_rate", "bottom_steps", "embedding_noise_multiplier[ecommerce]",
        "embedding_noise_multiplier[bank]"]


def test_noisy_labels_are_noised_with_the_calibrated_std() -> None:
    labels = (np.arange(20000) % 3 == 0).astype(float)
    noisy = release_noisy_labels(labels, noise_multiplier=1.5, seed=1)
    assert not np.allclose(noisy, labels)
    assert np.std(noisy - labels) == pytest.approx(1.5, rel=0.03)
    assert abs(np.mean(noisy - labels)) < 0.05


def test_released_embeddings_are_noised_and_must_be_clipped() -> None:
    clean = np.clip(np.random.default_rng(0).normal(0, 1, 20000), -0.5, 0.5)
    released = release_embeddings(clean, clip=0.5, noise_multiplier=1.6, seed=2)
    assert not np.allclose(released, clean)
    assert np.var(released - clean) == pytest.approx((1.6 * 0.5) ** 2, rel=0.05)
    with pytest.raises(ValueError, match="clip before releasing"):
        release_embeddings(clean * 3, clip=0.5, noise_multiplier=1.6, seed=2)


def test_errors_in_variables_correction_undoes_attenuation() -> None:
    rng = np.random.default_rng(0)
    clean = rng.normal(0, 1, size=(50000, 2))
    noise_std = np.array([0.0, 2.0])
    noisy = clean + rng.normal(0, 1, size=clean.shape) * noise_std
    # Least squares on the noisy inputs attenuates the noisy column's coefficient.
    truth = np.array([1.0, 1.0])
    target = clean @ truth
    naive = np.linalg.lstsq(np.column_stack([noisy, np.ones(len(noisy))]), target, rcond=None)[0]
    assert naive[1] < 0.3
    corrected, _ = eiv_correct(naive[:2], float(naive[2]), noisy, noise_std ** 2)
    assert corrected == pytest.approx(truth, abs=0.05)


def test_each_party_spends_at_most_its_budget_and_ledgers_match_the_accountant(
        synthetic_run) -> None:
    _, result, _ = synthetic_run
    for party in PARTIES:
        assert result.epsilon[party] <= 3.0 * (1 + 1e-9)
        assert result.epsilon[party] == pytest.approx(3.0, rel=1e-3)
        entries = [json.loads(line) for line in result.ledgers[party].read_text().splitlines()]
        events = [ledger_event(entry) for entry in entries]
        assert events == [r.event for r in result.releases[party]]
        assert entries[-1]["epsilon_cumulative"] == pytest.approx(
            composed_epsilon(events, delta=DELTA, conversion=CONVERSION))
    lender_release, = result.releases[LENDER]
    assert lender_release.stage == STAGE_LABELS
    assert (lender_release.event.sample_rate, lender_release.event.steps) == (1.0, 1)
    for party in PASSIVE:
        bottom, embeddings = result.releases[party]
        assert (bottom.stage, embeddings.stage) == (STAGE_BOTTOM, STAGE_EMBEDDINGS)
        assert bottom.event.sample_rate < 1.0  # Poisson-sampled DP-SGD: real amplification
        assert bottom.event.clipping_norm == FAST.bottom_clip_norm
        assert (embeddings.event.sample_rate, embeddings.event.steps) == (1.0, 1)
        assert embeddings.event.clipping_norm == FAST.embedding_clip
        assert releases_epsilon(result.releases[party], DELTA) == result.epsilon[party]
    assert result.mechanisms == plan_mechanisms(
        lender_release.event, {p: result.releases[p][0].event for p in PASSIVE},
        {p: result.releases[p][1].event for p in PASSIVE})


def test_audit_verifies_the_vertical_ledgers(synthetic_run) -> None:
    _, result, keys_dir = synthetic_run
    audit = verify(list(result.ledgers.values()), keys_dir)
    assert audit.ok, [str(f) for f in audit.findings]
    by_party = {p.partner: p for p in audit.partners}
    assert set(by_party) == set(PARTIES)
    for party, summary in by_party.items():
        assert summary.epsilon_claimed == pytest.approx(result.epsilon[party])
        assert summary.epsilon_claimed == pytest.approx(result.epsilon[party], rel=1e-9)
        assert summary.epsilon_claimed <= 3.0 * (1 + 1e-9)
    lines = [line for line in result.ledgers["bank"].read_text().splitlines() if line]
    assert '"release":"bottom-training"' in lines[0] and '"release":"embeddings"' in lines[1]


def test_only_declared_releases_cross_party_boundaries(synthetic_run) -> None:
    scenario, result, _ = synthetic_run
    n_train, n_test = len(scenario.train_labels), len(scenario.test_labels)
    raw_columns = [column for view in scenario.views.values()
                   for block in (view.train, view.test) for column in block.T]
    kinds = {m.kind for m in result.transcript.messages}
    assert kinds == RELEASED_KINDS | {"embedding-gradients"}
    for message in result.transcript.messages:
        assert message.sender != message.recipient
        assert message.payload.ndim == 1  # one number per customer: a 1-D score, never a table
        if message.kind == "noisy-labels":
            assert message.sender == LENDER and len(message.payload) == n_train
            assert not np.allclose(message.payload, scenario.train_labels)
        if message.kind in {"embeddings", "scoring-embeddings"}:
            assert message.sender in PASSIVE and message.recipient == LENDER
        if message.kind == "scoring-embeddings":
            assert len(message.payload) == n_test
        if message.stage in {"labels", "embeddings", "scoring"}:
            for column in raw_columns:
                if len(column) == len(message.payload):
                    assert not np.allclose(message.payload, column)
    private_kinds = {m.kind for m in result.transcript.messages if m.stage != "finetune"}
    assert private_kinds == RELEASED_KINDS
    gradients = [m for m in result.transcript.messages if m.kind == "embedding-gradients"]
    assert all(m.stage == "finetune" and m.sender == LENDER for m in gradients)


def test_dp_run_reports_every_setting_and_beats_chance_on_synthetic_data(synthetic_run) -> None:
    _, result, _ = synthetic_run
    for mode in ("dp", "non_private"):
        assert set(result.metrics[mode]) == {setting_name(s) for s in SETTINGS}
    all_three = setting_name(SETTINGS[-1])
    assert result.metrics["non_private"][all_three]["auc"] > result.metrics["non_private"][
        LENDER]["auc"]
    assert result.metrics["dp"][all_three]["auc"] > 0.6


def test_settings_validate_the_budget() -> None:
    with pytest.raises(ValueError, match="epsilon must be > 0"):
        VerticalSettings(epsilon=0)
    with pytest.raises(ValueError, match="bottom epsilon"):
        VerticalSettings(epsilon=1.0, bottom_epsilon=1.0)


@pytest.mark.slow
def test_vertical_scenario_aligns_85_to_95_percent_known_customers() -> None:
    scenario = load_vertical_scenario(0)
    n = scenario.known_customers[LENDER]
    for party in PASSIVE:
        assert 0.85 * n <= scenario.known_customers[party] <= 0.95 * n
    assert scenario.num_aligned <= min(scenario.known_customers.values())
    widths = {p: v.train.shape[1] for p, v in scenario.views.items()}
    assert widths == {p: len(c) for p, c in party_feature_indices(
        load_bundled("credit_data")[1]).items()}


@pytest.mark.slow
def test_non_private_all_three_matches_centralized_logistic_regression(tmp_path: Path) -> None:
    keys, keys_dir = make_keys(tmp_path)
    result = run_vertical_in_memory(0, ledger_dir=tmp_path / "ledgers", keys=keys)
    all_three = setting_name(SETTINGS[-1])
    assert abs(result.metrics["non_private"][all_three]["auc"] - result.centralized["auc"]) \
        <= 0.01
    assert result.metrics["dp"][all_three]["auc"] > result.metrics["dp"][LENDER]["auc"]
    assert verify(list(result.ledgers.values()), keys_dir).ok
