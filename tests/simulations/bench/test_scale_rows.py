"""The scale benchmark (simulations/bench/scale_rows.py) and training on memory-mapped splits
(the sampler and batched scoring it relies on: tests/common/learning/test_training.py)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from common.data.synthetic import write_partner_arrays
from common.data.tables import Split
from common.learning.model import build_model, get_weights
from common.learning.training import TrainSettings, train
from common.privacy.accounting import SubsampledGaussianEvent
from common.privacy.budget import MAX_EXPECTED_BATCH, MIN_EXPECTED_BATCH, PLAN_SAMPLE_RATE
from simulations.bench.scale_rows import format_table, measure_throughput, plot_throughput


def test_measure_throughput_end_to_end(tmp_path: Path) -> None:
    figures = measure_throughput((2_000,), workdir=tmp_path / "data", repeats=1,
                                 fresh_process=False)
    (size,) = figures["sizes"]
    assert size["rows"] == 2_000 and size["train_rows"] < 2_000
    assert size["sample_rate"] == PLAN_SAMPLE_RATE  # the plan rule: q·ñ is within [8, 4096]
    assert MIN_EXPECTED_BATCH <= size["batch_size"] <= MAX_EXPECTED_BATCH
    for mode in ("dp", "non_private"):
        assert size[mode]["rows_per_second"] > 0 and size[mode]["steps"] >= 1
        assert size[mode]["peak_rss_mib"] > 0
    assert size["dp_over_non_private"] > 0
    json.dumps(figures)
    assert plot_throughput(figures, tmp_path / "scale.png").stat().st_size > 0
    assert "2000" in format_table(figures)


def test_training_on_memory_maps_equals_training_in_memory(tmp_path: Path) -> None:
    data = write_partner_arrays(tmp_path, 2_000, seed=3)
    in_memory = Split(np.array(data.train.features), np.array(data.train.labels))
    event = SubsampledGaussianEvent(0.05, 1.0, 6, 1.0)
    weights = []
    for split in (data.train, in_memory):
        model = build_model(split.features.shape[1], (), 0)
        train(model, split, TrainSettings(), seed=1, dp=event)
        weights.append(get_weights(model))
    for key in weights[0]:
        np.testing.assert_array_equal(weights[0][key], weights[1][key])
