"""End to end on the bundled real data: Flower Simulation Engine, reports, CLI validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from common.config import RunConfig
from common.data.spec import load_run_partners
from common.outputs import RunLayout
from common.privacy.accounting import SubsampledGaussianEvent
from common.protocol import EVALUATE_METRIC_KEYS, FOLDED_EVALUATE_METRIC_KEYS, TRAIN_METRIC_KEYS
from server.strategy import ValidatingFedAvg
from simulations.cli import app
from simulations.simulate.horizontal import (
    create_run_keys,
    federation_runs,
    privacy_summary,
    run_federation,
)

pytestmark = pytest.mark.slow
RUNNER = CliRunner(env={"COLUMNS": "240"})


@pytest.fixture(scope="module")
def sampled_federation(tmp_path_factory):
    """Six iid partners, half of them drawn to train each of 2 rounds (`fraction-train` 0.5),
    with ledgers and receipts; every reply the coordinator receives is recorded."""
    from flwr.app import Message

    tmp = tmp_path_factory.mktemp("sampled")
    seen: list[tuple[str, dict, Message]] = []
    original_train = ValidatingFedAvg.aggregate_train
    original_evaluate = ValidatingFedAvg.aggregate_evaluate
    original_configure = ValidatingFedAvg.configure_train
    sent: dict[int, list[int]] = {}  # round -> node ids sent a train instruction

    def describe(msg) -> dict:
        content = msg.content
        return {"arrays": list(content.array_records), "metrics": list(content.metric_records),
                "configs": list(content.config_records),
                "metric_keys": {k for r in content.metric_records.values() for k in r},
                "config_keys": {k for r in content.config_records.values() for k in r},
                "other": set(content.keys()) - set(content.array_records)
                - set(content.metric_records) - set(content.config_records)}

    def spy_configure(self, server_round, arrays, config, grid):
        messages = list(original_configure(self, server_round, arrays, config, grid))
        sent[server_round] = [m.metadata.dst_node_id for m in messages]
        return messages

    def spy_train(self, server_round, replies):
        replies = list(replies)
        seen.extend(("train", describe(m), m) for m in replies)
        return original_train(self, server_round, replies)

    def spy_evaluate(self, server_round, replies):
        replies = list(replies)
        seen.extend(("evaluate", describe(m), m) for m in replies)
        return original_evaluate(self, server_round, replies)

    patch = pytest.MonkeyPatch()
    patch.setattr(ValidatingFedAvg, "aggregate_train", spy_train)
    patch.setattr(ValidatingFedAvg, "aggregate_evaluate", spy_evaluate)
    patch.setattr(ValidatingFedAvg, "configure_train", spy_configure)
    layout = RunLayout(tmp / "run")
    base = RunConfig(num_server_rounds=2, evaluate_every=1, split="iid", num_partners=6,
                     fraction_train=0.5, out_dir=str(layout.root))
    run = federation_runs(base, layout)["federated_dp"]
    partners = load_run_partners(run)
    create_run_keys(layout.keys, [p.partner for p in partners])
    try:
        result = run_federation(run, partners)
    finally:
        patch.undo()
    return run, layout, result, seen, sent


def test_only_arrays_metrics_and_config_leave_a_client(sampled_federation) -> None:
    _, _, result, seen, _ = sampled_federation
    assert result.history["status"] == "completed"
    kinds = [kind for kind, _, _ in seen]
    # 3 of 6 partners train each round; round 1's evaluation rides on round 2's train message
    # (the partners drawn again), the last round's goes to every partner.
    assert kinds.count("train") == 6 and kinds.count("evaluate") == 6
    assert any(d["metric_keys"] & set(FOLDED_EVALUATE_METRIC_KEYS)
               for kind, d, _ in seen if kind == "train")
    for kind, described, _ in seen:
        assert described["other"] == set()
        assert described["configs"] == ["info"]
        assert described["config_keys"] == {"partner", "refusal-reason", "ledger-entry-sha256",
                                            "feature-layout-sha256"}
        assert described["metrics"] == ["metrics"]
        allowed = ({*TRAIN_METRIC_KEYS, *FOLDED_EVALUATE_METRIC_KEYS} if kind == "train"
                   else set(EVALUATE_METRIC_KEYS))
        assert described["metric_keys"] <= allowed
        assert described["arrays"] == (["arrays"] if kind == "train" else [])


def test_a_partner_not_drawn_spends_nothing_and_epsilon_stays_per_partner(
        sampled_federation) -> None:
    from common.privacy.accounting import composed_epsilon
    from common.privacy.audit import verify

    run, layout, result, seen, sent = sampled_federation
    names = {m.metadata.src_node_id: str(m.content["info"]["partner"]) for _, _, m in seen}
    drawn = {r: {names[node] for node in nodes} for r, nodes in sent.items()}
    assert [len(partners) for partners in drawn.values()] == [3, 3]
    assert {r["round"]: set(r["accepted"]) for r in result.history["rounds"]} == drawn
    audit = verify(sorted(layout.dp_ledgers.glob("*.jsonl")), layout.keys, layout.dp_receipts)
    assert audit.ok, audit.findings
    by_partner = {p.partner: p for p in audit.partners}
    never_drawn = [name for name in run.partners
                   if not any(name in partners for partners in drawn.values())]
    for name in never_drawn:  # no instruction to train: no count, no update, no ledger at all
        assert name not in by_partner
        assert not (layout.dp_ledgers / f"{name}.jsonl").exists()
    for name in set(run.partners) - set(never_drawn):
        rounds = [r for r, partners in drawn.items() if name in partners]
        partner = by_partner[name]
        assert {e.round for e in partner.entries} <= set(rounds)  # count, train: drawn rounds
        trained = [e for e in partner.entries if e.event == "train"]
        assert [e.round for e in trained] == rounds
        events = [SubsampledGaussianEvent(e.sample_rate, e.noise_multiplier, e.steps)
                  for e in partner.entries if e.sample_rate is not None]
        # The partner's ε composes its own releases only (its count, the rounds it trained).
        assert partner.epsilon_claimed == pytest.approx(
            composed_epsilon(events, delta=run.sim_delta), rel=1e-9)
        assert partner.epsilon_claimed <= run.sim_epsilon


def _simulate(out: Path, *extra: str):
    return RUNNER.invoke(app, ["simulate", "--rounds", "3", "--seed", "1", "--out", str(out),
                               *extra])


def test_simulate_writes_report_contract_and_is_reproducible(tmp_path: Path) -> None:
    first = _simulate(tmp_path / "a")
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "a" / "report.json").read_text())
    for key in ("scenario", "seed", "epsilon", "delta", "rounds"):
        assert key in report
    assert (report["scenario"], report["seed"], report["epsilon"], report["rounds"]) == (
        "credit_data", 1, 3.0, 3)
    for setting in ("federated_dp", "federated", "local_only", "centralized"):
        pooled = report["results"][setting]["pooled"]
        for metric in ("auc", "ks", "gini", "brier"):
            assert np.isfinite(pooled[metric])
        assert 0.6 < pooled["auc"] <= 1.0
        for partner in ("lender", "ecommerce", "bank"):
            assert {"auc", "ks"} <= set(report["results"][setting]["partners"][partner])
    for partner in ("lender", "ecommerce", "bank"):
        privacy = report["privacy"][partner]
        assert privacy["epsilon_budget"] == 3.0 and privacy["delta"] == 1e-5
        assert 0 < privacy["epsilon_spent"] <= privacy["epsilon_budget"]
        assert privacy["noise_multiplier"] > 0 and privacy["rounds_trained"] == 3
        spent = privacy["epsilon_per_round"]
        assert all(b > a for a, b in zip(spent, spent[1:], strict=False))
    assert report["timing"]["wall_seconds"] > 0
    for name in ("report.md", "pooled_auc_per_round.png", "epsilon_per_round.png"):
        assert (tmp_path / "a" / name).stat().st_size > 0

    run_dir = tmp_path / "a"
    ledgers = sorted((run_dir / "federated_dp" / "ledgers").glob("*.jsonl"))
    assert [p.stem for p in ledgers] == ["bank", "ecommerce", "lender"]
    assert report["audit"]["ok"] and (run_dir / "audit.html").stat().st_size > 0
    assert "audit.html" in (run_dir / "report.md").read_text()
    audit = RUNNER.invoke(app, ["audit", "verify", *map(str, ledgers), "--keys",
                                str(run_dir / "keys"), "--receipts",
                                str(run_dir / "federated_dp" / "receipts.jsonl"), "--json"])
    assert audit.exit_code == 0, audit.output
    verdict = json.loads(audit.stdout)
    assert verdict["ok"] is True and verdict["findings"] == []
    for partner in verdict["partners"]:
        claimed, recomputed = partner["epsilon_claimed"], partner["epsilon_rdp"]
        assert claimed == pytest.approx(report["privacy"][partner["partner"]]["epsilon_spent"])
        independent = partner["epsilon_independent"] - partner["epsilon_tolerance"]
        assert independent <= claimed <= recomputed
        assert partner["rounds_trained"] == 3

    # Reproducible: the DP federation run again from the report's own config (fresh processes,
    # fresh keys) gives the same privacy figures, the same per-round metrics and the same
    # scores. (The other settings run the same code without noise, or in one process.)
    layout = RunLayout(tmp_path / "b")
    run = federation_runs(RunConfig.from_flower(report["config"]), layout)["federated_dp"]
    partners = load_run_partners(run)
    create_run_keys(layout.keys, [p.partner for p in partners])
    again = run_federation(run, partners)
    assert json.loads(json.dumps(privacy_summary(run, again.history))) == report["privacy"]
    assert [r["pooled"] for r in again.history["rounds"]] == [
        r["pooled"] for r in report["history"]["federated_dp"]["rounds"]]
    assert json.loads(json.dumps(again.metrics(partners))) == report["results"]["federated_dp"]


@pytest.mark.parametrize(("args", "key"), [
    (["--epsilon", "0"], "sim-epsilon"),
    (["--epsilon", "-1"], "sim-epsilon"),
    (["--delta", "0"], "sim-delta"),
    (["--delta", "1.5"], "sim-delta"),
    (["--rounds", "0"], "num-server-rounds"),
    (["--scenario", "mortgages"], "scenario"),
    (["--budget", "bnk=1"], "sim-budgets"),
])
def test_bad_run_config_fails_before_training_naming_the_key(tmp_path: Path, args, key) -> None:
    out = tmp_path / "never"
    result = RUNNER.invoke(app, ["simulate", "--out", str(out), *args])
    assert result.exit_code != 0
    assert f"'{key}'" in result.output
    assert not out.exists()


def _malicious_client_app(config: dict):
    """Partition 0 sends NaN weights, partition 1 a wrong-shaped update, partition 2 is honest."""
    import numpy as np
    from flwr.app import Array, ArrayRecord, Context, Message
    from flwr.clientapp import ClientApp

    from clients.app import evaluate, train

    client_app = ClientApp()

    @client_app.train()
    def _train(msg: Message, context: Context) -> Message:
        reply = train(msg, context, config)
        partition = int(context.node_config["partition-id"])
        arrays = reply.content["arrays"]
        if partition == 0:
            reply.content["arrays"] = ArrayRecord(
                {k: Array(np.full_like(a.numpy(), np.nan)) for k, a in arrays.items()})
        elif partition == 1:
            reply.content["arrays"] = ArrayRecord(
                {k: Array(np.zeros((7, 3), dtype=np.float32)) for k in arrays})
        return reply

    @client_app.evaluate()
    def _evaluate(msg: Message, context: Context) -> Message:
        return evaluate(msg, context, config)

    return client_app


def test_nan_and_wrong_shape_updates_are_rejected_in_a_simulation(tmp_path: Path) -> None:
    from flwr.simulation import run_simulation

    from server.app import build_server_app

    run = RunConfig(num_server_rounds=2, min_partners=1, out_dir=str(tmp_path / "fed"))
    config = run.to_flower()
    run_simulation(build_server_app(config), _malicious_client_app(config), num_supernodes=3,
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    history = json.loads((tmp_path / "fed" / "history.json").read_text())
    # Two partners never had an update accepted: the run says so, by name, instead of success.
    assert history["status"] == "incomplete"
    assert history["message"].startswith("ecommerce never contributed (failed 0, rejected 2")
    assert "lender never contributed (failed 0, rejected 2" in history["message"]
    assert history["partners"]["bank"]["accepted"] == 2
    for record in history["rounds"]:
        assert record["accepted"] == ["bank"]
        assert "NaN or Inf" in record["rejected"]["lender"]
        assert "shape" in record["rejected"]["ecommerce"]
    import torch

    state = torch.load(tmp_path / "fed" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())


@pytest.mark.slow
def test_simulate_vertical_reports_every_combination_and_its_ledgers_verify(
        tmp_path: Path) -> None:
    out = tmp_path / "vertical"
    done = RUNNER.invoke(app, ["simulate", "--scenario", "credit_data_vertical", "--epsilon", "3",
                               "--seed", "1", "--out", str(out)])
    assert done.exit_code == 0, done.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["results"]) == {"lender", "lender+ecommerce", "lender+bank",
                                      "lender+ecommerce+bank"}
    for name, modes in report["results"].items():
        assert set(modes) == {"dp", "non_private"}, name
        assert all(0.5 < m["auc"] <= 1 and 0 <= m["ks"] <= 1 for m in modes.values())
    everyone = report["results"]["lender+ecommerce+bank"]
    assert everyone["dp"]["auc"] > report["results"]["lender"]["dp"]["auc"] + 0.05
    assert abs(everyone["non_private"]["auc"] - report["centralized"]["auc"]) < 0.01
    for party, figures in report["privacy"].items():
        assert 0 < figures["epsilon_spent"] <= figures["epsilon_budget"] * (1 + 1e-9), party
    assert report["audit"]["ok"], report["audit"]["findings"]
    assert (out / "audit.html").exists() and "vertical" in (out / "report.md").read_text()
    again = RUNNER.invoke(app, ["simulate", "--scenario", "credit_data_vertical", "--out",
                                str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
