"""Which δ the partners' accountant is sound at: the claimed ε against dp_accounting's PLD.

For each δ a partner might set, calibrate the default plan (the bank of credit_data, ε = 3,
20 rounds) as a partner would, then compare the ε the partner claims (`prv`: min of Opacus RDP
and Opacus PRV's `eps_upper`) with dp_accounting's PLD accountant at a fine discretisation,
pessimistic (an upper bound on the true ε) and optimistic (a lower bound). A claim below the
optimistic PLD is unsound for certain; a claim below the pessimistic PLD is not shown to be an
upper bound. `common.privacy.accounting.DELTA_MIN` is the smallest δ where every claim here is at
least the pessimistic PLD. Prints a table; asserts nothing.

    python -m simulations.bench.delta_range [--epsilon 3] [--rounds 20]
"""

from __future__ import annotations

import argparse
from typing import Any

DELTAS = (1e-6, 1e-9, 1e-10, 1e-12, 2e-14)
PLD_INTERVAL = 1e-4
"""dp_accounting's PLD value discretization for this table (finer than the auditor's)."""


def pld_epsilon(events: list[Any], delta: float, *, pessimistic: bool) -> float:
    """dp_accounting's PLD ε of `events` at `delta` (pessimistic: upper bound; else lower),
    add-or-remove-one neighbours, each event a Poisson-subsampled Gaussian self-composed."""
    from dp_accounting.pld import privacy_loss_distribution as pld

    composed = None
    for event in events:
        step = pld.from_gaussian_mechanism(
            standard_deviation=event.noise_multiplier,
            sensitivity=1.0,
            pessimistic_estimate=pessimistic,
            value_discretization_interval=PLD_INTERVAL,
            sampling_prob=event.sample_rate,
            use_connect_dots=pessimistic,
        ).self_compose(event.steps)
        composed = step if composed is None else composed.compose(step)
    return float(composed.get_epsilon_for_delta(delta))


def delta_rows(epsilon: float, rounds: int, deltas: tuple[float, ...] = DELTAS) -> list[dict]:
    """One row per δ: σ calibrated at it, the claimed ε and both PLD bounds."""
    from common.privacy.accounting import DELTA_MIN, composed_epsilon
    from common.privacy.budget import calibrate_plan
    from simulations.bench.accounting import default_plan

    setup = default_plan()
    rows = []
    for delta in deltas:
        plan = calibrate_plan(
            epsilon=epsilon,
            delta=delta,
            num_train_rows=setup["rows"],
            batch_size=setup["batch_size"],
            local_epochs=setup["local_epochs"],
            planned_rounds=rounds,
            max_grad_norm=setup["max_grad_norm"],
            seed=setup["seed"],
            count_epsilon_share=setup["count_epsilon_share"],
            validate_delta=False,
        )
        events = plan.planned_events()
        rows.append(
            {
                "delta": delta,
                "accepted": delta >= DELTA_MIN,
                "sigma": plan.round_event.noise_multiplier,
                "claimed": composed_epsilon(events, delta=delta),
                "rdp": composed_epsilon(events, delta=delta, accountant="rdp"),
                "pld_pessimistic": pld_epsilon(events, delta, pessimistic=True),
                "pld_optimistic": pld_epsilon(events, delta, pessimistic=False),
            }
        )
    return rows


def format_rows(rows: list[dict]) -> str:
    """The table as text."""
    lines = [
        f"{'delta':>8} {'accepted':>8} {'sigma':>7} {'claimed':>8} {'RDP':>8} "
        f"{'PLD pess.':>9} {'PLD opt.':>9}  claim >= PLD pess.?"
    ]
    for row in rows:
        lines.append(
            f"{row['delta']:>8.0e} {'yes' if row['accepted'] else 'no':>8} "
            f"{row['sigma']:>7.4f} {row['claimed']:>8.4f} {row['rdp']:>8.4f} "
            f"{row['pld_pessimistic']:>9.4f} {row['pld_optimistic']:>9.4f}  "
            f"{'yes' if row['claimed'] >= row['pld_pessimistic'] else 'NO'}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epsilon", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(format_rows(delta_rows(args.epsilon, args.rounds)))


if __name__ == "__main__":
    main()
