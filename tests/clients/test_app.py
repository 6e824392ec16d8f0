"""The partner's ClientApp: what leaves it, how its privacy composes, what it refuses."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord

from clients.app import build_client_app
from common.config import PartnerConfig, RunConfig
from common.data.layout import announcement
from common.data.schema import load_schema
from common.data.tables import bundled_path
from common.partner import PartnerState, load_data
from common.privacy.accounting import SubsampledGaussianEvent, composed_epsilon
from common.privacy.budget import plan_sample_rate
from common.privacy.ledger import plan_from_calibration
from common.protocol import (
    DATASET_NOT_RECOGNISED,
    EVALUATE_METRIC_KEYS,
    LAYOUT_NOT_ANNOUNCED,
    LEDGER_UNTRUSTED,
    LIFETIME_BUDGET_EXHAUSTED,
    PARTNER_STATE,
    SIGNING_KEY_UNUSABLE,
    TRAIN_METRIC_KEYS,
)
from tests.flower_helpers import (
    evaluate_message,
    initial_weights,
    node_context,
    set_task_identity,
    train_message,
)

SIM_NODE = {"partition-id": 0, "num-partitions": 3}


@pytest.fixture(autouse=True)
def _identity() -> None:
    set_task_identity()


def _run_layout() -> dict[str, str]:
    """The config entries a coordinator running the bundled credit_data schema announces."""
    return announcement(load_schema(bundled_path("credit_data")[1]).layout())


def _train(run: RunConfig, context, server_round: int, **config):
    """One round through a freshly built ClientApp, as Flower rebuilds it every round."""
    client_app = build_client_app(run.to_flower())
    weights = initial_weights(run)
    msg = train_message(weights, {"server-round": server_round,
                                  "local-epochs": run.local_epochs, **_run_layout(), **config})
    return client_app(msg, context)


def test_reply_carries_only_arrays_metrics_and_info() -> None:
    run = RunConfig(num_server_rounds=3)
    context = node_context(SIM_NODE, run)
    reply = _train(run, context, 1)
    content = reply.content
    assert set(content.keys()) == {"arrays", "metrics", "info"}
    assert set(content["metrics"].keys()) <= set(TRAIN_METRIC_KEYS)
    assert set(content["info"].keys()) == {"partner", "refusal-reason", "ledger-entry-sha256",
                                           "feature-layout-sha256"}
    assert content["info"]["partner"] == "lender"
    assert set(content["arrays"].keys()) == set(initial_weights(run))
    for key, array in content["arrays"].items():
        assert array.numpy().shape == initial_weights(run)[key].shape
    evaluation = build_client_app(run.to_flower())(
        evaluate_message(initial_weights(run)), context)
    assert set(evaluation.content.keys()) == {"metrics", "info"}
    assert set(evaluation.content["metrics"].keys()) <= set(EVALUATE_METRIC_KEYS)


def test_epsilon_composes_over_rounds_across_rebuilt_client_apps() -> None:
    run = RunConfig(num_server_rounds=4)
    context = node_context(SIM_NODE, run)
    spent, steps = [], []
    for server_round in range(1, 5):
        metrics = _train(run, context, server_round).content["metrics"]
        spent.append(metrics["epsilon-spent"])
        steps.append(int(metrics["steps"]))
        sample_rate, sigma = metrics["sample-rate"], metrics["noise-multiplier"]
    assert all(b > a for a, b in zip(spent, spent[1:], strict=False)), spent
    state = PartnerState.from_dict(dict(context.state[PARTNER_STATE]))
    assert state.plan is not None and state.plan.released_rows == metrics["num-examples"]
    single_run = composed_epsilon([state.plan.count_event,  # the noisy count, released once
                              SubsampledGaussianEvent(sample_rate, sigma, sum(steps))],
                             delta=run.sim_delta)
    assert spent[-1] == pytest.approx(single_run, rel=1e-9)
    assert spent[-1] <= run.sim_epsilon
    assert len(context.state[PARTNER_STATE]["events-steps"]) == 4


def test_round_beyond_the_plan_is_refused_without_an_update() -> None:
    run = RunConfig(num_server_rounds=2)
    context = node_context(SIM_NODE, run)
    for server_round in (1, 2):
        assert _train(run, context, server_round).content["info"]["refusal-reason"] == ""
    reply = _train(run, context, 3)
    assert "arrays" not in reply.content
    assert "budget" in reply.content["info"]["refusal-reason"]
    assert reply.content["metrics"]["refused"] == 1.0
    assert reply.content["metrics"]["epsilon-spent"] <= run.sim_epsilon


def test_greedy_coordinator_cannot_make_the_partner_overspend() -> None:
    run = RunConfig(num_server_rounds=3)
    context = node_context(SIM_NODE, run)
    honest = _train(run, context, 1).content["metrics"]
    greedy = {"local-epochs": 50.0, "noise-multiplier": 0.0, "sample-rate": 1.0,
              "batch-size": 100000, "clip-norm": 1e6}
    for server_round in range(2, 6):
        metrics = _train(run, context, server_round, **greedy).content["metrics"]
        assert metrics["noise-multiplier"] == honest["noise-multiplier"]
        assert metrics["sample-rate"] == honest["sample-rate"]
        assert metrics["epsilon-spent"] <= run.sim_epsilon
    # The greedy rounds were refused: they would each have blown the budget.
    assert metrics["refused"] == 1.0
    assert metrics["rounds-trained"] == 1.0


def test_deployed_partner_budget_comes_from_node_config_not_run_config(tmp_path: Path) -> None:
    node = {**_ledger_node(tmp_path), "epsilon": 0.5, "delta": 1e-6}
    run = RunConfig(num_server_rounds=2, sim_epsilon=100.0, sim_delta=0.1)
    context = node_context(node, run)
    metrics = _train(run, context, 1).content["metrics"]
    assert metrics["epsilon-budget"] == 0.5
    assert metrics["delta"] == 1e-6
    assert metrics["epsilon-spent"] <= 0.5


def _ledger_node(tmp_path: Path, partner: str = "bank") -> dict:
    from common.privacy.crypto import generate_signing_key, write_key_pair

    csv_path, schema_path = bundled_path("credit_data")
    if not (tmp_path / "keys" / f"{partner}.key").exists():
        write_key_pair(generate_signing_key(), tmp_path / "keys", partner)
    return {"partner": partner, "epsilon": 3.0, "delta": 1e-5, "data-path": str(csv_path),
            "schema-path": str(schema_path), "ledger-path": str(tmp_path / f"{partner}.jsonl"),
            "signing-key": str(tmp_path / "keys" / f"{partner}.key"),
            "odometer-path": str(tmp_path / f"{partner}.odometer.jsonl"),
            "lifetime-epsilon": 10.0}


def test_restarted_partner_resumes_with_exact_epsilon_from_its_ledger(tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=4)
    node = _ledger_node(tmp_path / "restarted")
    before = node_context(node, run)
    spent = [_train(run, before, r).content["metrics"]["epsilon-spent"] for r in (1, 2)]
    after = node_context(node, run)  # process state dropped: only the ledger survives
    assert PARTNER_STATE not in after.state
    spent += [_train(run, after, r).content["metrics"]["epsilon-spent"] for r in (3, 4)]
    lines = [json.loads(line) for line in
             (tmp_path / "restarted" / "bank.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines] == ["count", "train", "train", "train", "train"]
    plan = plan_from_calibration(lines[-1]["calibration"],
                                 epsilon_budget=lines[-1]["epsilon_budget"],
                                 delta=lines[-1]["delta"])
    assert {e["calibration"]["released_rows"] for e in lines} == {plan.released_rows}
    uninterrupted = [composed_epsilon([plan.count_event, *[plan.round_event] * r],
                                 delta=plan.delta) for r in range(1, 5)]
    assert spent == pytest.approx(uninterrupted, rel=1e-12)
    assert all(b > a for a, b in zip(spent, spent[1:], strict=False))


def test_reply_releases_the_noisy_count_never_the_exact_training_size(tmp_path: Path) -> None:
    """Under add/remove-one adjacency an exact size alone tells whether a record is present: the
    weight, q and the normaliser derive from the Gaussian count the ledger logs."""
    run = RunConfig(num_server_rounds=2)
    node = _ledger_node(tmp_path)
    context = node_context(node, run)
    first = _train(run, context, 1).content["metrics"]
    second = _train(run, context, 2).content["metrics"]
    data = load_data(PartnerConfig.from_node_config(node, run), run)
    count = json.loads(Path(node["ledger-path"]).read_text().splitlines()[0])
    released = count["calibration"]["released_rows"]
    assert count["event"] == "count" and count["mechanism"]["sample_rate"] == 1.0
    assert first["num-examples"] == second["num-examples"] == released
    sigma = count["mechanism"]["noise_multiplier"]  # sensitivity 1: std sigma rows
    assert sigma > 5 and abs(released - len(data.train)) < 6 * sigma
    assert first["sample-rate"] == pytest.approx(plan_sample_rate(released, run.batch_size))


@pytest.mark.parametrize(("lifetime", "allowed"), [(1.0, False), (2.5, True)])
def test_a_new_ledger_does_not_reset_the_lifetime_budget(tmp_path: Path, lifetime: float,
                                                         allowed: bool) -> None:
    """The issue's case: budget 1 spent over two rounds, then the SuperNode restarts with
    another ledger file. In the same run it is refused outright (its count was released
    already); in a new run its odometer (same data set, any ledger) refuses unless the lifetime
    budget still covers the run's whole budget, and then nothing is released, not even a count."""
    run = RunConfig(num_server_rounds=2)
    node = {**_ledger_node(tmp_path), "epsilon": 1.0, "lifetime-epsilon": lifetime}
    context = node_context(node, run)
    for server_round in (1, 2):
        assert _train(run, context, server_round).content["info"]["refusal-reason"] == ""
    same_run = {**node, "ledger-path": str(tmp_path / "ledger-B.jsonl")}
    reply = _train(run, node_context(same_run, run), 3)
    assert reply.content["info"]["refusal-reason"] == LEDGER_UNTRUSTED
    assert not Path(same_run["ledger-path"]).exists()
    new_run = {**node, "ledger-path": str(tmp_path / "ledger-C.jsonl")}
    reply = _train(run, node_context(new_run, run, run_id=2), 1)
    reason = reply.content["info"]["refusal-reason"]
    odometer = [json.loads(line) for line in Path(node["odometer-path"]).read_text().splitlines()]
    if allowed:
        assert reason == "" and "arrays" in reply.content
        assert [e["release"] for e in odometer] == ["count", "dp-sgd", "dp-sgd", "count",
                                                    "dp-sgd"]
        return
    assert reason == LIFETIME_BUDGET_EXHAUSTED and "arrays" not in reply.content
    assert "num-examples" not in reply.content["metrics"]  # not even a noisy count released
    assert not Path(new_run["ledger-path"]).exists()
    _assert_no_local_detail(reason, tmp_path)
    assert [e["release"] for e in odometer] == ["count", "dp-sgd", "dp-sgd"]
    assert odometer[-1]["epsilon_lifetime_cumulative"] <= 1.0


def test_a_round_reserved_but_never_logged_still_counts(tmp_path: Path) -> None:
    """A crash between the odometer's reservation and the ledger entry (or a ledger cut short):
    the restarted partner counts the reserved round as spent."""
    run = RunConfig(num_server_rounds=4)
    node = _ledger_node(tmp_path)
    _train(run, node_context(node, run), 1)
    ledger = Path(node["ledger-path"])
    lines = ledger.read_text().splitlines(keepends=True)
    _train(run, node_context(node, run), 2)
    ledger.write_text("".join(lines))  # round 2's entry lost; its reservation stays
    metrics = _train(run, node_context(node, run), 3).content["metrics"]
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    plan = plan_from_calibration(entries[-1]["calibration"],
                                 epsilon_budget=entries[-1]["epsilon_budget"],
                                 delta=entries[-1]["delta"])
    three_rounds = composed_epsilon([plan.count_event, *[plan.round_event] * 3], delta=plan.delta)
    assert metrics["epsilon-spent"] == pytest.approx(three_rounds, rel=1e-9)


def _assert_no_local_detail(reason: str, tmp_path: Path) -> None:
    """A refusal reason that reaches the coordinator names no local file or OS error."""
    assert reason
    assert str(tmp_path) not in reason and "/" not in reason and "\\" not in reason
    assert ".jsonl" not in reason and ".key" not in reason


def test_tampered_ledger_makes_the_partner_refuse(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    run = RunConfig(num_server_rounds=4)
    node = _ledger_node(tmp_path)
    context = node_context(node, run)
    for server_round in (1, 2):
        _train(run, context, server_round)
    ledger = Path(node["ledger-path"])
    text = ledger.read_text()
    tampered = re.sub(r'"steps":(\d+)', lambda m: f'"steps":{int(m.group(1)) // 2}', text, count=1)
    assert tampered != text
    ledger.write_text(tampered)
    reply = _train(run, node_context(node, run), 3)
    assert "arrays" not in reply.content
    reason = reply.content["info"]["refusal-reason"]
    assert reply.content["metrics"]["refused"] == 1.0
    assert reason == LEDGER_UNTRUSTED
    _assert_no_local_detail(reason, tmp_path)
    # The full detail (file, finding) stays in the partner's own log.
    assert any("bad-signature" in r.getMessage() and str(ledger) in r.getMessage()
               for r in caplog.records if r.levelname == "ERROR")
    assert ledger.read_text().count("\n") == 3  # nothing appended to a ledger it cannot trust


def test_ledger_signed_by_another_key_is_refused(tmp_path: Path) -> None:
    from common.privacy.crypto import generate_signing_key, write_key_pair

    run = RunConfig(num_server_rounds=4)
    node = _ledger_node(tmp_path)
    _train(run, node_context(node, run), 1)
    write_key_pair(generate_signing_key(), tmp_path / "other", "bank")
    reply = _train(run, node_context({**node, "signing-key": str(tmp_path / "other" / "bank.key")},
                                     run), 2)
    assert reply.content["info"]["refusal-reason"] == LEDGER_UNTRUSTED


def test_unreadable_signing_key_refuses_without_naming_it(tmp_path: Path,
                                                           caplog: pytest.LogCaptureFixture
                                                           ) -> None:
    run = RunConfig(num_server_rounds=4)
    missing = tmp_path / "nowhere" / "bank.key"
    node = {**_ledger_node(tmp_path), "signing-key": str(missing)}
    reply = _train(run, node_context(node, run), 1)
    assert "arrays" not in reply.content
    assert reply.content["metrics"]["refused"] == 1.0
    reason = reply.content["info"]["refusal-reason"]
    assert reason == SIGNING_KEY_UNUSABLE
    _assert_no_local_detail(reason, tmp_path)
    assert any(str(missing) in r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert not Path(node["ledger-path"]).exists()


def test_truncated_or_deleted_ledger_is_refused_not_reset(tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=4)
    node = _ledger_node(tmp_path)
    context = node_context(node, run)
    for server_round in (1, 2):
        _train(run, context, server_round)
    ledger = Path(node["ledger-path"])
    ledger.write_text(ledger.read_text().splitlines(keepends=True)[0])  # drop the last entry
    reply = _train(run, context, 3)
    assert "arrays" not in reply.content
    assert "truncated or replaced" in reply.content["info"]["refusal-reason"]
    _assert_no_local_detail(reply.content["info"]["refusal-reason"], tmp_path)
    ledger.unlink()
    assert "truncated or replaced" in _train(run, context, 3).content["info"]["refusal-reason"]


def test_budget_cannot_change_within_a_run(tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=4)
    node = _ledger_node(tmp_path)
    _train(run, node_context(node, run), 1)
    lowered = {**node, "epsilon": 0.1}
    reply = _train(run, node_context(lowered, run), 2)
    assert "differs from the budget in the ledger" in reply.content["info"]["refusal-reason"]


def test_deployed_partners_draw_fresh_noise_each_time(tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=2)
    first = _train(run, node_context(_ledger_node(tmp_path / "a"), run), 1)
    second = _train(run, node_context(_ledger_node(tmp_path / "b"), run), 1)
    a, b = first.content["arrays"], second.content["arrays"]
    assert any(not np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
    simulated = [_train(run, node_context(SIM_NODE, run), 1).content["arrays"] for _ in range(2)]
    assert all(np.array_equal(simulated[0][k].numpy(), simulated[1][k].numpy())
               for k in simulated[0])


def test_data_errors_do_not_leak_values_to_the_coordinator(tmp_path: Path) -> None:
    from clients.app import PartnerError

    csv_path, _ = bundled_path("credit_data")
    bad = tmp_path / "bad.csv"
    text = csv_path.read_text().splitlines()
    header, row = text[0], text[1].split(",")
    row[1] = "SECRET-VALUE"  # Seniority must be numeric
    bad.write_text("\n".join([header, ",".join(row), *text[2:]]) + "\n")
    node = {**_ledger_node(tmp_path), "data-path": str(bad)}
    run = RunConfig(num_server_rounds=2)
    with pytest.raises(PartnerError) as raised:
        _train(run, node_context(node, run), 1)
    assert "SECRET-VALUE" not in str(raised.value) and str(bad) not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__suppress_context__


def test_train_request_without_a_round_is_refused_before_logging(tmp_path: Path) -> None:
    from clients.app import PartnerError

    run = RunConfig(num_server_rounds=2)
    node = _ledger_node(tmp_path)
    msg = train_message(initial_weights(run), {"local-epochs": 1.0})
    with pytest.raises(PartnerError):
        build_client_app(run.to_flower())(msg, node_context(node, run))
    assert not Path(node["ledger-path"]).exists()


def test_a_partner_whose_schema_permutes_the_runs_layout_refuses_before_reading_its_data(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 item 2: the same categories in another order (same feature count) used to train
    and be accepted every round, its features permuted relative to the model. Now it refuses,
    before reading its data or releasing anything, saying what differs (schema metadata only),
    and echoes its own layout's hash; so does its evaluation."""
    import common.partner as partner_module

    schema_path = bundled_path("credit_data")[1]
    permuted = tmp_path / "bank.toml"
    permuted.write_text(schema_path.read_text().replace('["rent", "owner",', '["owner", "rent",'))
    node = {**_ledger_node(tmp_path), "schema-path": str(permuted)}
    monkeypatch.setattr(partner_module, "load_data",
                        lambda *args: pytest.fail("the partner read its data"))
    run = RunConfig(num_server_rounds=2)
    context = node_context(node, run)
    reply = _train(run, context, 1)
    assert "arrays" not in reply.content
    assert dict(reply.content["metrics"]) == {"refused": 1.0}  # not even a noisy count
    reason = reply.content["info"]["refusal-reason"]
    assert "column 'Home': categories differs from the run's" in reason  # not its values
    assert "priv" not in reason
    _assert_no_local_detail(reason, tmp_path)
    own = load_schema(permuted).layout_sha256
    assert reply.content["info"]["feature-layout-sha256"] == own != _run_layout()[
        "feature-layout-sha256"]
    assert not Path(node["ledger-path"]).exists() and not Path(node["odometer-path"]).exists()
    request = evaluate_message(initial_weights(run))
    request.content["config"] = ConfigRecord(_run_layout())
    evaluation = build_client_app(run.to_flower())(request, context).content
    assert dict(evaluation["metrics"]) == {}
    assert evaluation["info"]["refusal-reason"] == reason
    assert evaluation["info"]["feature-layout-sha256"] == own


def test_a_deployed_partner_refuses_an_instruction_that_announces_no_layout(
        tmp_path: Path) -> None:
    run = RunConfig(num_server_rounds=2)
    node = _ledger_node(tmp_path)
    msg = train_message(initial_weights(run), {"server-round": 1, "local-epochs": 1.0})
    reply = build_client_app(run.to_flower())(msg, node_context(node, run))
    assert reply.content["info"]["refusal-reason"] == LAYOUT_NOT_ANNOUNCED
    assert "arrays" not in reply.content and not Path(node["ledger-path"]).exists()
    matching = _train(run, node_context(node, run), 1).content["info"]
    assert matching["refusal-reason"] == ""
    assert matching["feature-layout-sha256"] == _run_layout()["feature-layout-sha256"]


def test_deployed_partner_writes_its_own_verdict_locally_and_releases_nothing_more(
        tmp_path: Path) -> None:
    """Issue 13 section 2: at the last round's evaluation, a partner with `local-report-path`
    compares the global model with a local-only model on its own test rows, on its machine."""
    run = RunConfig(num_server_rounds=2)
    folder = tmp_path / "verdict"
    releasing = {**_ledger_node(tmp_path), "release-metrics": "true"}
    node = {**releasing, "local-report-path": str(folder)}

    def evaluation(node_config: dict, server_round: int) -> dict:
        request = evaluate_message(initial_weights(run))
        request.content["config"] = ConfigRecord({**_run_layout(), "server-round": server_round})
        reply = build_client_app(run.to_flower())(request, node_context(node_config, run)).content
        return {key: dict(record) for key, record in reply.items()}

    assert evaluation(node, 1) and not folder.exists()  # only the last round's evaluation
    with_report = evaluation(node, 2)
    assert with_report == evaluation(releasing, 2)  # the reply is unchanged
    by_default = evaluation({**_ledger_node(tmp_path), "local-report-path": str(folder)}, 2)
    assert by_default["metrics"] == {} and by_default["info"]["refusal-reason"]
    saved = json.loads((folder / "verdict-1.json").read_text())
    assert saved["partner"] == "bank" and saved["epsilon_budget"] == 3.0
    assert saved["test_rows"] == with_report["metrics"]["num-examples"]
    d = saved["differences"]["federated_dp"]
    assert d["low"] <= d["difference"] <= d["high"]
    assert d["verdict"] in ("paid off", "cost", "no clear difference")
    assert saved["auc"]["federated_dp"] == pytest.approx(with_report["metrics"]["auc"])
    said = (folder / "verdict-1.md").read_text()
    assert f"bank: joining the federation under ε=3 changed AUC on its own {saved['test_rows']}" \
        in said and d["verdict"] in said


def test_a_grown_data_file_keeps_its_lifetime_budget_and_another_is_refused_as_such(
    tmp_path: Path,
) -> None:
    """The lifetime odometer identifies a data set by its records: one appended loan is the
    same data set (its spent budget refuses the next run), a file of other loans gets its own
    refusal, not "the ledger failed verification"."""
    header, *rows = bundled_path("credit_data")[0].read_text().splitlines()
    files = {"first": rows[:600], "grown": [*rows[:600], rows[600]], "other": rows[601:1200]}
    for name, lines in files.items():
        (tmp_path / f"{name}.csv").write_text("\r\n".join([header, *lines]) + "\r\n")
    run = RunConfig(num_server_rounds=2)
    node = {
        **_ledger_node(tmp_path),
        "epsilon": 1.0,
        "lifetime-epsilon": 1.0,
        "data-path": str(tmp_path / "first.csv"),
    }
    context = node_context(node, run)
    for server_round in (1, 2):
        assert _train(run, context, server_round).content["info"]["refusal-reason"] == ""
    reasons = []
    for number, name in enumerate(("grown", "other"), start=2):
        later = {
            **node,
            "data-path": str(tmp_path / f"{name}.csv"),
            "ledger-path": str(tmp_path / f"ledger-{name}.jsonl"),
        }
        reply = _train(run, node_context(later, run, run_id=number), 1)
        assert "arrays" not in reply.content and not Path(later["ledger-path"]).exists()
        reasons.append(reply.content["info"]["refusal-reason"])
    assert reasons == [LIFETIME_BUDGET_EXHAUSTED, DATASET_NOT_RECOGNISED]
    _assert_no_local_detail(DATASET_NOT_RECOGNISED, tmp_path)


def test_a_delta_not_below_one_over_the_noisy_count_is_refused_and_logged(
        tmp_path: Path) -> None:
    """Review of issue 21: the δ < 1/ñ test needs ñ, so it runs after the count is released;
    the count is then logged in the ledger before the round is refused, never sent unlogged."""
    run = RunConfig(num_server_rounds=2)
    node = {**_ledger_node(tmp_path), "delta": 1e-3}  # the bank trains on ~1,600 rows
    reply = _train(run, node_context(node, run), 1).content
    assert "not below 1/n" in reply["info"]["refusal-reason"] and "arrays" not in reply
    lines = [json.loads(line) for line in (tmp_path / "bank.jsonl").read_text().splitlines()]
    assert [e["event"] for e in lines][0] == "count" and len(lines) == 2
    assert lines[1]["refusal_reason"] == reply["info"]["refusal-reason"]
