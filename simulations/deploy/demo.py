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
    format_number,
)
from common.privacy.audit import AuditResult
from simulations.audit.html import render_audit_html
from simulations.deploy.commands import shell_line
from simulations.deploy.local import LocalFederation


def run_demo(fed: LocalFederation, step: Callable[[str], None],
             progress: Callable[[int], None] | None = None) -> dict:
    """The whole local federation: set up, start, register, run, audit, report. The caller
    closes `fed` (tears everything down) whatever happens."""
    started = time.monotonic()
    o = fed.options
    step(f"writing keys, certificates and partner data to {fed.workspace}")
    fed.prepare()
    step(f"starting flower-superlink on 127.0.0.1:{o.superlink_port} (TLS, node auth)")
    fed.start_superlink()
    for partner in o.partners:
        step(f"registering {partner}'s SuperNode key")
        fed.register(partner)
    for partner in o.partners:
        step(f"starting {partner}'s flower-supernode (eps={o.epsilon:g}, delta={o.delta:g})")
        fed.start_supernode(partner)
    fed.wait_online(len(o.partners))
    step(f"flwr run: {o.rounds} rounds"
         + (" with SecAgg+ secure aggregation" if o.secure_aggregation else "")
         + " (each ClientApp starts in its own process)")
    history = fed.wait_run(fed.start_run(), progress)
    step("auditing the partners' ledgers against the coordinator's receipts")
    audit = fed.audit()
    if audit is not None:
        (fed.workspace / AUDIT_HTML).write_text(render_audit_html(audit))
    report = demo_report(fed, history, audit, time.monotonic() - started)
    (fed.workspace / REPORT_JSON).write_text(json.dumps(report, indent=2, sort_keys=True))
    (fed.workspace / REPORT_MD).write_text(render_demo_report(report))
    return report


def demo_report(fed: LocalFederation, history: dict, audit: AuditResult | None,
                wall_seconds: float) -> dict:
    """What the local federation produced, where, and whether it verifies."""
    run_dir = fed.run_dir
    pooled = next((r["pooled"] for r in reversed(history["rounds"]) if r["pooled"]), {})
    evaluation = next((r["evaluation"] for r in reversed(history["rounds"])
                       if r["evaluation"]), {})
    return {
        "status": history["status"], "message": history["message"],
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
        "audit": ({"ok": audit.ok, "findings": [str(f) for f in audit.findings],
                   "receipts_checked": audit.receipts_checked, "report": AUDIT_HTML}
                  if audit else {"ok": False, "findings": ["no partner wrote a ledger"],
                                 "receipts_checked": 0, "report": ""}),
        "files": {"model": str(run_dir / MODEL_FILE),
                  "model_meta": str(run_dir / MODEL_META_FILE),
                  "history": str(run_dir / HISTORY_FILE),
                  "receipts": str(run_dir / RECEIPTS_FILE),
                  "ledgers": [str(p) for p in fed.ledger_paths()], "logs": str(fed.logs)},
        "commands": [shell_line(c) for c in (
            fed.commands.superlink(), *map(fed.commands.register, fed.options.partners),
            *(fed.commands.supernode(p, fed.options.supernode_port + i, fed.options.epsilon,
                                     fed.options.delta)
              for i, p in enumerate(fed.options.partners)),
            fed.commands.run(str(fed.app), fed.options.rounds, fed.options.min_partners),
            fed.commands.audit(fed.options.partners))],
    }


def render_demo_report(report: dict) -> str:
    """report.md of a local federation run."""
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
    verdict = ("VERIFIED: no findings" if audit["ok"] else
               f"{len(audit['findings'])} finding(s):\n" + "\n".join(
                   f"- {f}" for f in audit["findings"]))
    lines += ["", f"Audit ({audit['receipts_checked']} receipts, [{audit['report']}]"
              f"({audit['report']})): {verdict}", "", "Files:", ""]
    files = report["files"]
    lines += [f"- {name}: `{path}`" for name, path in files.items() if name != "ledgers"]
    lines += [f"- ledger: `{path}`" for path in files["ledgers"]]
    lines += ["", "Commands run (see docs/partners.md):", "", "```sh", *report["commands"],
              "```", ""]
    return "\n".join(lines)
