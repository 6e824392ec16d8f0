"""The model (common/learning/model.py) and the one training/evaluation loop
(common/learning/training.py)."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

from common.data.tables import Split
from common.learning import training
from common.learning.metrics import METRIC_NAMES
from common.learning.model import CreditRiskMLP, build_model, get_weights, set_weights
from common.learning.training import (
    TrainSettings,
    evaluate,
    num_steps,
    poisson_sampler,
    predict,
    steps_per_epoch,
    train,
)
from common.privacy.accounting import SubsampledGaussianEvent

NUM_FEATURES = 5
TRUE_WEIGHTS = np.array([1.5, -2.0, 1.0, 0.0, 0.5])


def _separable(n: int, seed: int) -> Split:
    rng = np.random.default_rng(seed)
    features = rng.uniform(-1.0, 1.0, size=(n, NUM_FEATURES)).astype(np.float32)
    return Split(features, (features @ TRUE_WEIGHTS > 0).astype(np.float32))


@pytest.fixture(scope="module")
def train_split() -> Split:
    return _separable(300, seed=0)


@pytest.fixture(scope="module")
def test_split() -> Split:
    return _separable(200, seed=1)


def _assert_same_weights(a: OrderedDict[str, np.ndarray], b: OrderedDict[str, np.ndarray]) -> None:
    assert list(a) == list(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def _differs(a: OrderedDict[str, np.ndarray], b: OrderedDict[str, np.ndarray]) -> bool:
    return any(not np.array_equal(a[k], b[k]) for k in a)


# --- model ------------------------------------------------------------------------------------


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a, b = build_model(NUM_FEATURES, (8,), seed=3), build_model(NUM_FEATURES, (8,), seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    _assert_same_weights(get_weights(a), get_weights(b))
    assert _differs(get_weights(a), get_weights(build_model(NUM_FEATURES, (8,), seed=4)))


def test_model_outputs_one_logit_per_row() -> None:
    model = build_model(NUM_FEATURES, (8, 4), seed=0)
    assert model(torch.zeros(7, NUM_FEATURES)).shape == (7,)
    logistic = build_model(NUM_FEATURES, (), seed=0)  # no hidden layer: logistic regression
    assert [tuple(v.shape) for v in get_weights(logistic).values()] == [(1, NUM_FEATURES), (1,)]


def test_model_rejects_zero_features() -> None:
    with pytest.raises(ValueError, match="num_features"):
        CreditRiskMLP(0)


def test_get_weights_returns_a_copy() -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    weights = get_weights(model)
    weights["net.0.weight"][:] = 123.0
    assert not np.any(get_weights(model)["net.0.weight"] == 123.0)


def test_set_weights_round_trips() -> None:
    source, target = build_model(NUM_FEATURES, (8,), 1), build_model(NUM_FEATURES, (8,), 2)
    set_weights(target, get_weights(source))
    _assert_same_weights(get_weights(source), get_weights(target))
    features = torch.randn(4, NUM_FEATURES)
    assert torch.equal(source(features), target(features))


def test_set_weights_rejects_missing_and_unexpected_keys() -> None:
    model = build_model(NUM_FEATURES, (8,), 0)
    weights = get_weights(model)
    weights.pop("net.2.bias")
    weights["net.9.weight"] = np.zeros(3, dtype=np.float32)
    before = get_weights(model)
    pattern = r"missing \['net.2.bias'\].*unexpected \['net.9.weight'\]"
    with pytest.raises(ValueError, match=pattern):
        set_weights(model, weights)
    _assert_same_weights(before, get_weights(model))


def test_set_weights_rejects_wrong_shapes() -> None:
    model = build_model(NUM_FEATURES, (8,), 0)
    weights = get_weights(model)
    weights["net.0.weight"] = np.zeros((8, NUM_FEATURES + 1), dtype=np.float32)
    before = get_weights(model)
    with pytest.raises(ValueError, match=r"'net.0.weight' has shape \(8, 6\), expected \(8, 5\)"):
        set_weights(model, weights)
    _assert_same_weights(before, get_weights(model))


# --- settings and step counts -----------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "pattern"), [
    ({"epochs": 0}, "epochs"), ({"batch_size": 0}, "batch size"),
    ({"learning_rate": 0}, "learning rate"), ({"optimizer": "rmsprop"}, "optimizer"),
])
def test_train_settings_validation(kwargs: dict[str, object], pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        TrainSettings(**kwargs)  # type: ignore[arg-type]


def test_step_counts() -> None:
    assert steps_per_epoch(100, batch_size=32) == 4
    assert steps_per_epoch(100, sample_rate=0.1) == 10
    assert steps_per_epoch(5, sample_rate=1.0) == 1
    assert num_steps(2.5, 4) == 10
    assert num_steps(0.01, 4) == 1  # at least one step


# --- training ---------------------------------------------------------------------------------

FAST = TrainSettings(epochs=2.0, batch_size=32, learning_rate=0.05)
DP = SubsampledGaussianEvent(sample_rate=0.1, noise_multiplier=1.0, steps=20, clipping_norm=1.0)


@pytest.mark.parametrize("dp", [None, DP], ids=["non-private", "dp"])
def test_same_seed_gives_identical_weights(train_split: Split,
                                           dp: SubsampledGaussianEvent | None) -> None:
    runs = []
    for seed in (7, 7, 8):
        model = build_model(NUM_FEATURES, (8,), seed=0)
        train(model, train_split, FAST, seed=seed, dp=dp)
        runs.append(get_weights(model))
    _assert_same_weights(runs[0], runs[1])
    assert _differs(runs[0], runs[2]), "a different seed must change sampling (and noise)"


def test_dp_takes_exactly_the_events_steps(train_split: Split) -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    event = replace(DP, steps=13)
    outcome = train(model, train_split, FAST, seed=0, dp=event)
    assert outcome.steps == 13
    assert outcome.dp == event
    assert outcome.num_examples == len(train_split)
    assert math.isfinite(outcome.mean_loss)


def test_step_counts_follow_the_settings_or_the_event(train_split: Split) -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    assert train(model, train_split, FAST, seed=0).steps == 2 * math.ceil(300 / 32)
    assert train(model, train_split, FAST, seed=0, dp=replace(DP, steps=7)).steps == 7
    outcome = train(model, train_split, replace(FAST, epochs=0.3), seed=0)
    assert outcome.steps == 3 and outcome.dp is None


def test_dp_with_tiny_sample_rate_survives_empty_batches() -> None:
    data = _separable(20, seed=3)  # q * n = 0.2: most Poisson batches are empty
    model = build_model(NUM_FEATURES, (4,), seed=0)
    outcome = train(model, data, FAST, seed=0, dp=SubsampledGaussianEvent(0.01, 1.0, 30))
    assert outcome.steps == 30
    assert all(np.all(np.isfinite(w)) for w in get_weights(model).values())


def test_dp_weights_stay_finite_under_heavy_noise(train_split: Split) -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    train(model, train_split, TrainSettings(learning_rate=0.5, optimizer="sgd"), seed=0,
          dp=SubsampledGaussianEvent(0.05, 50.0, 20, clipping_norm=10.0))
    weights = get_weights(model)
    assert all(np.all(np.isfinite(w)) for w in weights.values())
    assert _differs(weights, get_weights(build_model(NUM_FEATURES, (8,), seed=0)))


def test_dp_without_noise_or_clipping_is_full_batch_gradient_descent(train_split: Split) -> None:
    """q = 1, sigma = 0 and a huge C make DP-SGD's sum/(q·n) the ordinary mean gradient."""
    settings = TrainSettings(epochs=5.0, optimizer="sgd", learning_rate=0.1,
                             batch_size=len(train_split))
    plain, private = (build_model(NUM_FEATURES, (8,), seed=1) for _ in range(2))
    train(plain, train_split, settings, seed=0)
    train(private, train_split, settings, seed=0,
          dp=SubsampledGaussianEvent(1.0, 0.0, 5, clipping_norm=1e6))
    a, b = get_weights(plain), get_weights(private)
    assert _differs(a, get_weights(build_model(NUM_FEATURES, (8,), seed=1)))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-6, err_msg=key)


def test_clipping_bounds_each_step(train_split: Split) -> None:
    """With sigma = 0 and q = 1, SGD's first step (empty momentum buffer) moves the weights by at
    most lr · C: the mean of per-sample gradients that are each clipped to norm C."""
    clip, lr = 0.01, 1.0
    model = build_model(NUM_FEATURES, (), seed=0)
    before = np.concatenate([w.ravel() for w in get_weights(model).values()])
    train(model, train_split, TrainSettings(optimizer="sgd", learning_rate=lr), seed=0,
          dp=SubsampledGaussianEvent(1.0, 0.0, 1, clipping_norm=clip))
    after = np.concatenate([w.ravel() for w in get_weights(model).values()])
    assert 0 < np.linalg.norm(after - before) <= lr * clip * (1 + 1e-5)


def test_model_can_train_again_after_dp_round(train_split: Split) -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    train(model, train_split, FAST, seed=0, dp=replace(DP, steps=3))
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None
                   for p in model.parameters())
    train(model, train_split, FAST, seed=1, dp=replace(DP, steps=3))
    train(model, train_split, replace(FAST, epochs=0.3), seed=2)
    assert all(np.all(np.isfinite(w)) for w in get_weights(model).values())


def test_training_rejects_an_empty_split() -> None:
    empty = Split(np.zeros((0, NUM_FEATURES), dtype=np.float32), np.zeros(0, dtype=np.float32))
    with pytest.raises(ValueError, match="empty"):
        train(build_model(NUM_FEATURES, (4,), 0), empty, FAST, seed=0)


def test_training_learns_a_separable_problem(train_split: Split, test_split: Split) -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    untrained = evaluate(model, test_split)["log_loss"]
    train(model, train_split, TrainSettings(epochs=5, batch_size=32, learning_rate=0.05), seed=0)
    metrics = evaluate(model, test_split)
    assert metrics["auc"] > 0.9
    assert metrics["log_loss"] < untrained


def test_dp_training_learns_a_separable_problem(train_split: Split, test_split: Split) -> None:
    model = build_model(NUM_FEATURES, (8,), seed=0)
    train(model, train_split, FAST, seed=0, dp=replace(DP, steps=60))
    assert evaluate(model, test_split)["auc"] > 0.9


# --- evaluation -------------------------------------------------------------------------------


def test_evaluate_reports_all_metrics(test_split: Split) -> None:
    metrics = evaluate(build_model(NUM_FEATURES, (8,), seed=0), test_split)
    assert set(metrics) == {*METRIC_NAMES, "log_loss"} == {"auc", "ks", "gini", "brier",
                                                           "pr_auc", "log_loss"}
    assert all(math.isfinite(v) for v in metrics.values())


def test_evaluate_of_a_coin_flip_model(test_split: Split) -> None:
    model = build_model(NUM_FEATURES, (), seed=0)
    set_weights(model, {k: np.zeros_like(v) for k, v in get_weights(model).items()})
    scores = predict(model, test_split.features)
    np.testing.assert_allclose(scores, 0.5)
    metrics = evaluate(model, test_split)
    assert metrics["log_loss"] == pytest.approx(math.log(2), rel=1e-6)
    assert metrics["brier"] == pytest.approx(0.25)
    assert metrics["auc"] == pytest.approx(0.5)


def _assert_poisson(draw, rows: int, rate: float, draws: int = 4_000) -> None:
    """Each row kept independently with probability `rate`: per-row rates (the first and last
    row too), binomial batch sizes, neighbours kept together as often as chance says."""
    kept = np.zeros(rows)
    sizes = []
    for _ in range(draws):
        sample = draw().numpy()
        assert np.all(np.diff(sample) > 0) and sample.min() >= 0 and sample.max() < rows
        kept[sample] += 1
        sizes.append(len(sample))
    per_row_sd = np.sqrt(draws * rate * (1 - rate))
    assert np.abs(kept - draws * rate).max() < 5 * per_row_sd
    assert abs(np.mean(sizes) - rows * rate) < 5 * np.sqrt(rows * rate * (1 - rate) / draws)
    assert np.var(sizes) == pytest.approx(rows * rate * (1 - rate), rel=0.15)  # binomial
    samples = [draw().numpy() for _ in range(400)]
    pairs = np.mean([np.isin(s + 1, s).sum() for s in samples])
    assert pairs == pytest.approx((rows - 1) * rate**2, rel=0.1)
    # Independent steps: consecutive samples share as many rows as chance says.
    shared = np.mean([np.isin(a, b).sum() for a, b in zip(samples, samples[1:], strict=False)])
    assert shared == pytest.approx(rows * rate**2, rel=0.1)


@pytest.mark.parametrize(("sampler", "block"), [("mask", None), ("gaps-v1", None),
                                                ("gaps-v1", 8)])  # 8: ~26 blocks per sample
def test_poisson_sampling_keeps_each_row_independently_with_probability_q(
        sampler: str, block: int | None) -> None:
    draw = poisson_sampler(1_000, 0.2, torch.Generator().manual_seed(0), sampler, block)
    _assert_poisson(draw, 1_000, 0.2)


def test_the_sampler_follows_the_partner_size(monkeypatch: pytest.MonkeyPatch) -> None:
    assert training.sampler_for(training.POISSON_MASK_MAX_ROWS) == "mask"
    assert training.sampler_for(training.POISSON_MASK_MAX_ROWS + 1) == "gaps-v1"
    with pytest.raises(ValueError, match="unknown Poisson sampler"):
        poisson_sampler(10, 0.5, torch.Generator(), "reservoir")


def _repeating(generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """Correct per step, dependent across steps: repeats the previous sample 20% of the time."""
    fresh = poisson_sampler(1_000, 0.2, generator, "mask")
    last: list[torch.Tensor] = []

    def draw() -> torch.Tensor:
        if not last or torch.rand(1, generator=generator).item() >= 0.2:
            last[:] = [fresh()]
        return last[0]
    return draw


@pytest.mark.parametrize("broken", ["fixed_size", "repeating"])
def test_the_poisson_check_catches_a_broken_sampler(broken: str) -> None:
    generator = torch.Generator().manual_seed(0)

    def fixed_size() -> torch.Tensor:  # sampling without replacement: batch size never varies
        return torch.randperm(1_000, generator=generator)[:200].sort().values

    draw = fixed_size if broken == "fixed_size" else _repeating(generator)
    with pytest.raises(AssertionError):
        _assert_poisson(draw, 1_000, 0.2)


def test_batched_scores_equal_whole_scores(monkeypatch: pytest.MonkeyPatch) -> None:
    features = np.random.default_rng(0).normal(size=(1_000, 7)).astype(np.float32)
    model = build_model(7, (4,), 0)
    whole = predict(model, features)
    monkeypatch.setattr(training, "PREDICT_BATCH_ROWS", 128)
    np.testing.assert_allclose(predict(model, features), whole, rtol=1e-6)


def test_a_record_whose_gradient_is_not_finite_cannot_poison_the_dp_update() -> None:
    """Issue 21: a coordinator-chosen model that overflows on one record only makes that
    record's per-sample gradient non-finite; clipping cannot bound it and, before the fix, the
    update became NaN exactly when the record was sampled (a membership bit through "did the
    update diverge"). Non-finite entries are zeroed before clipping: the update stays finite."""
    features = np.zeros((40, 3), dtype=np.float32)
    features[:, 0] = 1.0
    features[7, 1] = np.inf  # the record the overflow singles out
    data = Split(features, (np.arange(40) % 2).astype(np.float32))
    model = build_model(3, (), seed=0)
    train(model, data, TrainSettings(optimizer="sgd", learning_rate=0.1), seed=3,
          dp=SubsampledGaussianEvent(1.0, 1.0, 3))
    assert all(np.all(np.isfinite(w)) for w in get_weights(model).values())
