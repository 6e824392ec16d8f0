"""Benchmark: wall time of the ECDH-PSI that lines up the vertical scenario's customers.

The lender knows customers 0..n-1; e-commerce and bank each know a seeded random 85-95% of them.
All parties run one after another in this process (`run_psi_in_memory`), so the total is the sum
of every party's work; deployed, the partners compute at the same time. Prints per-step timings,
the total, and whether every party's reordered rows name the same customers.

    python -m simulations.bench.psi --ids 100000
"""

from __future__ import annotations

import argparse
import time

from common.vertical.psi import customer_id, run_psi_in_memory, sample_known_ids


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ids", type=int, default=100_000, help="customers the lender knows")
    parser.add_argument("--seed", type=int, default=0, help="seed of the partners' ID samples")
    args = parser.parse_args(argv)

    ids = {
        "lender": [customer_id(row) for row in range(args.ids)],
        "ecommerce": sample_known_ids(args.ids, seed=args.seed),
        "bank": sample_known_ids(args.ids, seed=args.seed + 1),
    }
    print("IDs per party: " + ", ".join(f"{name} {len(v):,}" for name, v in ids.items()))
    start = time.perf_counter()
    run = run_psi_in_memory(ids)
    total = time.perf_counter() - start

    for step, seconds in run.timings.items():
        print(f"  {step:<28} {seconds:8.2f} s")
    per_party: dict[str, float] = {}
    for step, seconds in run.timings.items():
        party = step.split(".")[0]
        per_party[party] = per_party.get(party, 0.0) + seconds
    print("per party: " + ", ".join(f"{name} {s:.1f} s" for name, s in per_party.items()))
    wire = sum(len(v) if isinstance(v, bytes) else 4 * len(v) if isinstance(v, list) else 0
               for record in run.transcript for v in record.values())
    print(f"messages: {len(run.transcript)}, about {wire / 1e6:.1f} MB of items and indices")
    lined_up = {name: [ids[name][row] for row in rows] for name, rows in run.aligned_rows.items()}
    aligned = all(rows == run.intersection for rows in lined_up.values())
    expected = set(ids["ecommerce"]) & set(ids["bank"])
    print(f"intersection: {len(run.intersection):,} customers "
          f"(expected {len(expected):,}, correct: {set(run.intersection) == expected}); "
          f"rows aligned: {aligned}")
    print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main()
