"""The README's results table: `fedcredit simulate` over seeds and budgets, pooled test AUC.

    python -m simulations.bench.seeds --epsilons 3 1 --seeds 0 1 2 3 4 --out runs/seeds

Runs every (ε, seed) cell that has no `report.json` yet under `OUT/eps<E>-seed<S>` (so an
interrupted sweep resumes), then prints one Markdown table: federated + DP (global and
personalised) per ε, and the non-private settings (which do not depend on ε) from the first ε.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

DP_ROWS = (("federated + DP (global model)", "federated_dp"),
           ("federated + DP, personalised", "federated_dp_personalized"))
PLAIN_ROWS = (("federated, non-private", "federated"), ("local only, non-private", "local_only"),
              ("centralized pooled, non-private", "centralized"))


def run_dir(out: Path, epsilon: float, seed: int) -> Path:
    """Where one cell's simulation writes."""
    return out / f"eps{epsilon:g}-seed{seed}"


def run_cell(out: Path, epsilon: float, seed: int, rounds: int) -> dict:
    """One `fedcredit simulate` (skipped when its report exists); its report."""
    target = run_dir(out, epsilon, seed)
    report = target / "report.json"
    if not report.exists():
        print(f"simulating eps={epsilon:g} seed={seed} -> {target}", flush=True)
        subprocess.run([sys.executable, "-m", "simulations.cli", "simulate", "--scenario",
                        "credit_data", "--epsilon", f"{epsilon:g}", "--rounds", str(rounds),
                        "--seed", str(seed), "--out", str(target), "--overwrite"],
                       check=True, stdout=subprocess.DEVNULL)
    return json.loads(report.read_text())


def table(reports: dict[tuple[float, int], dict], epsilons: list[float],
          seeds: list[int]) -> str:
    """The Markdown table of pooled test AUC, one row per setting (and ε), mean last."""
    header = ["setting", "ε", *[f"seed {s}" for s in seeds], "mean"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def row(label: str, eps_text: str, key: str, epsilon: float) -> str:
        aucs = [reports[(epsilon, s)]["results"][key]["pooled"]["auc"] for s in seeds]
        cells = [f"{a:.4f}" for a in aucs] + [f"**{statistics.mean(aucs):.4f}**"]
        return "| " + " | ".join([label, eps_text, *cells]) + " |"

    for epsilon in epsilons:
        lines += [row(label, f"{epsilon:g}", key, epsilon) for label, key in DP_ROWS]
    lines += [row(label, "–", key, epsilons[0]) for label, key in PLAIN_ROWS]
    worst = max(max(r["privacy"][p]["epsilon_spent"] / r["privacy"][p]["epsilon_budget"]
                    for p in r["privacy"]) for r in reports.values())
    audits = all(r["audit"]["ok"] for r in reports.values())
    lines += ["", f"largest ε spent / budget: {worst:.6f}; every audit verified: {audits}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run the missing cells, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[3.0, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    args = parser.parse_args(argv)
    reports = {(e, s): run_cell(args.out, e, s, args.rounds)
               for e in args.epsilons for s in args.seeds}
    print(table(reports, args.epsilons, args.seeds))


if __name__ == "__main__":
    main()
