"""The README's results table, now a thin wrapper over `fedcredit sweep` (simulations.sweep).

    python -m simulations.bench.seeds --epsilons 3 1 --seeds 0 1 2 3 4 --out runs/seeds

is `fedcredit sweep --epsilons 3,1 --seeds 0-4 --scenario credit_data --rounds 20 --out
runs/seeds`: completed cells are reused, the rest simulated, and the per-seed table of pooled AUC
is in `runs/seeds/sweep.md` (beside sweep.csv and sweep.png). Prefer `fedcredit sweep`.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def sweep_args(epsilons: list[float], seeds: list[int], rounds: int, out: Path) -> list[str]:
    """The `fedcredit sweep` arguments this command stands for."""
    return ["--epsilons", ",".join(f"{e:g}" for e in epsilons),
            "--seeds", ",".join(str(s) for s in seeds), "--scenario", "credit_data",
            "--rounds", str(rounds), "--out", str(out)]


def main(argv: list[str] | None = None) -> None:
    """Parse the old arguments, run `fedcredit sweep` with them."""
    from simulations.sweep_cli import sweep_app

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[3.0, 1.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", type=Path, default=Path("runs/seeds"))
    args = parser.parse_args(argv)
    sweep_app(sweep_args(args.epsilons, args.seeds, args.rounds, args.out),
              prog_name="fedcredit sweep")


if __name__ == "__main__":
    main()
