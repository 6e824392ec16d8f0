"""`fedcredit federation demo`: the whole local federation (set up, start, register, run, audit)
and its report."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from common.outputs import (
    AUDIT_HTML,
    HISTORY_FILE,
    MODEL_FILE,
    MODEL_META_FILE,
    RECEIPTS_FILE,
    REPORT_JSON,
    REPORT_MD,
    SCORES_FILE,
    format_number,
)
from common.privacy.audit import AuditResult
from simulations.audit.html import render_audit_html
from simulations.deploy.commands import VERTICAL_ID_COLUMN, shell_line
from simulations.deploy.local import LocalFederation


def run_demo(fed: LocalFederation, step: Callable[[str], None],
             progress: Callable[[int], None] | None = None) -> dict:
    """The whole local federation: set up, start, register, run, audit, report. The caller
    closes `fed` (tears everything down) whatever happens."""
    started = time.monotonic()
    o = fed.options
    step(f"each partner makes its own keys in {fed.partner_homes}/<partner>/ (`fedcredit keys "
         f"new`; on one machine only because this is a demo), the coordinator makes its "
         f"certificates from their public keys alone (`federation init`) in {fed.pki}; "
         f"each partner signs the app bundle with its own key and trusts only that key "
         f"(`fedcredit app sign`, `app trust`); writing partner data")
    fed.prepare()
    step(f"starting the app registry on 127.0.0.1:{fed.commands.registry_port} (the signed "
         f"bundle) and flower-superlink on 127.0.0.1:{o.superlink_port} (TLS, node auth)")
    fed.start_superlink()
    for partner in o.partners:
        step(f"registering {partner}'s SuperNode key")
        fed.register(partner)
    for partner in o.partners:
        step(f"starting {partner}'s flower-supernode (eps={o.epsilon:g}, delta={o.delta:g}; "
             f"runs only a bundle {partner} signed)")
        fed.start_supernode(partner)
    fed.wait_online(len(o.partners))
    if o.vertical:
        step("flwr run: vertical (PSI alignment on the customer IDs, one-shot DP releases, the "
             "lender's top model; each message starts a ClientApp process)")
        history = fed.wait_run(fed.start_run())
        step("auditing the parties' ledgers")
    else:
        step(f"flwr run: {o.rounds} rounds"
             + (" with SecAgg+ secure aggregation" if o.secure_aggregation else "")
             + " (each ClientApp starts in its own process)")
        history = fed.wait_run(fed.start_run(), progress)
        step("auditing the partners' ledgers against the coordinator's receipts")
    audit = fed.audit()
    if audit is not None:
        (fed.workspace / AUDIT_HTML).write_text(render_audit_html(audit))
    wall = time.monotonic() - started
    report = (vertical_demo_report(fed, history, audit, wall) if o.vertical
              else demo_report(fed, history, audit, wall))
    (fed.workspace / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True))
    (fed.workspace / REPORT_MD).write_text(render_demo_report(report))
    return report


def _audit_summary(audit: AuditResult | None) -> dict:
    return ({"ok": audit.ok, "findings": [str(f) for f in audit.findings],
             "receipts_checked": audit.receipts_checked, "report": AUDIT_HTML}
            if audit else {"ok": False, "findings": ["no partner wrote a ledger"],
                           "receipts_checked": 0, "report": ""})


def _commands(fed: LocalFederation) -> list[str]:
    """Every command the demo ran, as a person types it."""
    c, partners = fed.commands, fed.options.partners
    return [shell_line(args) for args in (
        *map(c.keys_new, partners), c.init(partners), c.app_build(str(fed.app)),
        *(step(p) for p in partners for step in (c.app_key, c.app_trust, c.app_sign)),
        c.app_serve(partners), c.superlink(), *map(c.register, partners),
        *map(fed.supernode_command, partners), fed.run_command(), c.audit(partners))]


def demo_report(fed: LocalFederation, history: dict, audit: AuditResult | None,
                wall_seconds: float) -> dict:
    """What the local federation produced, where, and whether it verifies."""
    run_dir = fed.run_dir
    pooled = next((r["pooled"] for r in reversed(history["rounds"]) if r["pooled"]), {})
    evaluation = next((r["evaluation"] for r in reversed(history["rounds"])
                       if r["evaluation"]), {})
    return {
        "mode": "horizontal", "status": history["status"], "message": history["message"],
        "run_id": history["run_id"], "wall_seconds": wall_seconds,
        "secure_aggregation": fed.options.secure_aggregation,
        "rounds": [{"round": r["round"], "accepted": sorted(r["accepted"]),
                    "refused": r["refused"], "rejected": r["rejected"], "failed": r["failed"]}
                   for r in history["rounds"]],
        "pooled_test_metrics": pooled, "partner_evaluation": evaluation,
        "privacy": {p.partner: {"epsilon_budget": p.epsilon_budget, "delta": p.delta,
                                "epsilon_claimed": p.epsilon_claimed,
                                "epsilon_rdp_recomputed": p.epsilon_rdp,
                                "rounds_trained": p.rounds_trained, "refusals": p.refusals}
                    for p in (audit.partners if audit else [])},
        "audit": _audit_summary(audit),
        "files": {"model": str(run_dir / MODEL_FILE),
                  "model_meta": str(run_dir / MODEL_META_FILE),
                  "history": str(run_dir / HISTORY_FILE),
                  "receipts": str(run_dir / RECEIPTS_FILE),
                  "ledgers": [str(p) for p in fed.ledger_paths()], "logs": str(fed.logs)},
        "commands": _commands(fed),
    }


def vertical_demo_report(fed: LocalFederation, result: dict, audit: AuditResult | None,
                         wall_seconds: float) -> dict:
    """What a vertical run on the local federation produced (the coordinator's vertical.json:
    alignment sizes, the lender's released evaluation, ε per party), where, and whether the
    parties' ledgers verify."""
    spec = fed.options.spec
    scores = fed.run_dir / SCORES_FILE
    return {
        "mode": "vertical", "status": "completed", "message": "",
        "run_id": result.get("run_id", ""), "wall_seconds": wall_seconds,
        "secure_aggregation": False,
        "data": spec.source if spec is not None else "credit_data_vertical (bundled)",
        "tables": {p: {"data": t.data, "schema": t.schema, "id_column": t.id_column}
                   for p, t in fed.tables.items()} or {
            p: {"data": f"{fed.commands.data}/{p}.csv", "schema": f"{fed.commands.data}/{p}.toml",
                "id_column": VERTICAL_ID_COLUMN} for p in fed.options.partners},
        "alignment": {k: result.get(k) for k in ("num_aligned", "num_train", "num_test")},
        "message_rounds": result.get("message_rounds"),
        "run_seconds": result.get("wall_seconds"),
        "test_metrics": result.get("metrics", {}).get("dp", {}),
        "epsilon_reported": result.get("epsilon", {}),
        "privacy": {p.partner: {"epsilon_budget": p.epsilon_budget, "delta": p.delta,
                                "epsilon_claimed": p.epsilon_claimed,
                                "accountant": p.accountant,
                                "epsilon_recomputed": p.epsilon_independent,
                                "epsilon_rdp_recomputed": p.epsilon_rdp,
                                "releases": len(p.entries), "refusals": p.refusals}
                    for p in (audit.partners if audit else [])},
        "audit": _audit_summary(audit),
        "files": {"result": str(fed.result_file),
                  **({"scores": str(scores)} if scores.exists() else {}),
                  "ledgers": [str(p) for p in fed.ledger_paths()], "logs": str(fed.logs)},
        "commands": _commands(fed),
    }


def render_demo_report(report: dict) -> str:
    """report.md of a local federation run."""
    if report.get("mode") == "vertical":
        return render_vertical_demo_report(report)
    lines = [f"# Local federation over TLS: {report['status']}", ""]
    if report["message"]:
        lines += [f"**{report['message']}**", ""]
    lines += [f"Run {report['run_id']}, {len(report['rounds'])} rounds, "
              f"{report['wall_seconds']:.0f} s wall, secure aggregation "
              f"{'on (SecAgg+)' if report['secure_aggregation'] else 'off'}.", "",
              "| round | accepted | not accepted |", "|---|---|---|"]
    for r in report["rounds"]:
        missing = {**r["refused"], **r["rejected"], **r["failed"]}
        lines.append(f"| {r['round']} | {', '.join(r['accepted'])} | "
                     + "; ".join(f"{p}: {why}" for p, why in missing.items()) + " |")
    metrics = report["pooled_test_metrics"]
    if metrics:
        lines += ["", "Final model on the partners' pooled test rows (demo only: a real "
                  "coordinator holds no data): "
                  + ", ".join(f"{k} {metrics[k]:.4f}" for k in ("auc", "ks", "brier")
                              if k in metrics)]
    lines += ["", "| partner | ε budget | δ | ε spent (ledger) | ε recomputed (RDP) | rounds |",
              "|---|---|---|---|---|---|"]
    for partner, p in report["privacy"].items():
        lines.append(f"| {partner} | {p['epsilon_budget']} | {p['delta']} | "
                     f"{format_number(p['epsilon_claimed'])} | "
                     f"{format_number(p['epsilon_rdp_recomputed'])} | "
                     f"{p['rounds_trained']} |")
    audit = report["audit"]
    lines += ["", f"Audit ({audit['receipts_checked']} receipts, [{audit['report']}]"
              f"({audit['report']})): {_verdict(audit)}"]
    return "\n".join([*lines, *_files_and_commands(report, "docs/partners.md")])


def _verdict(audit: dict) -> str:
    return ("VERIFIED: no findings" if audit["ok"] else
            f"{len(audit['findings'])} finding(s):\n" + "\n".join(
                f"- {f}" for f in audit["findings"]))


def _files_and_commands(report: dict, docs: str) -> list[str]:
    files = report["files"]
    return ["", "Files:", "",
            *(f"- {name}: `{path}`" for name, path in files.items() if name != "ledgers"),
            *(f"- ledger: `{path}`" for path in files["ledgers"]),
            "", f"Commands run (see {docs}; all on one machine only because this is a demo: "
                f"in a real federation each partner makes its own keys and runs its SuperNode on "
                f"its own machine, and hands the coordinator only its public keys):", "",
            "```sh", *report["commands"], "```", ""]


def vertical_summary_line(report: dict) -> str:
    """One line on what a vertical run produced, for the terminal."""
    size, metrics = report["alignment"], report["test_metrics"]
    spent = ", ".join(f"{p} {format_number(a['epsilon_claimed'])}"
                      for p, a in report["privacy"].items())
    everyone = metrics.get(max(metrics, key=len)) if metrics else None
    return (f"vertical: {size['num_aligned']} customers aligned by PSI ({size['num_train']} "
            f"training, {size['num_test']} test)"
            + (f"; lender's test AUC with all parties {everyone['auc']:.4f}" if everyone and
               "auc" in everyone else "")
            + (f"; ε spent: {spent}" if spent else ""))


def render_vertical_demo_report(report: dict) -> str:
    """report.md of a vertical run on the local federation."""
    size = report["alignment"]
    lines = [f"# Vertical run on a local federation over TLS: {report['status']}", "",
             f"Run {report['run_id']}, {report['wall_seconds']:.0f} s wall from set-up to "
             f"teardown ({report['run_seconds'] or 0:.0f} s for the run itself, "
             f"{report['message_rounds']} message rounds). Data: {report['data']}.", "",
             "| party | its own table | customer-ID column |", "|---|---|---|",
             *(f"| {p} | `{t['data']}` (schema `{t['schema']}`) | `{t['id_column']}` |"
               for p, t in report["tables"].items()), "",
             f"PSI alignment: {size['num_aligned']} customers known to all three parties "
             f"({size['num_train']} training, {size['num_test']} test rows; the coordinator "
             f"learns these sizes, never an ID)."]
    metrics = report["test_metrics"]
    if metrics:
        lines += ["", "The lender's test AUC/KS per party combination, with DP (the demo's "
                  "lender opts in with node config `release-evaluation=true`; a deployed "
                  "lender's default is off):", "", "| parties | AUC | KS |", "|---|---|---|",
                  *(f"| {name} | {m.get('auc', float('nan')):.4f} | "
                    f"{m.get('ks', float('nan')):.4f} |" for name, m in metrics.items())]
    lines += ["", "| party | ε budget | δ | ε spent (ledger) | accountant | ε recomputed by "
              "the audit | ε recomputed (RDP, looser) | releases |",
              "|---|---|---|---|---|---|---|---|"]
    for party, p in report["privacy"].items():
        lines.append(f"| {party} | {p['epsilon_budget']} | {p['delta']} | "
                     f"{format_number(p['epsilon_claimed'])} | {p['accountant']} | "
                     f"{format_number(p['epsilon_recomputed'])} | "
                     f"{format_number(p['epsilon_rdp_recomputed'])} | {p['releases']} |")
    audit = report["audit"]
    lines += ["", "The lender's ε is its label ε (its noisy labels, one release); a passive "
              "party's covers its bottom training and its one release of noisy embeddings.", "",
              f"Audit of the parties' ledgers (a vertical run has no coordinator receipts; "
              f"[{audit['report']}]({audit['report']})): {_verdict(audit)}"]
    return "\n".join([*lines, *_files_and_commands(report, "docs/vertical.md")])
