"""Check, before anything trains, that every simulated partner can carry out the run's plan.

`RunConfig` checks each key on its own. What the keys imply together only shows on the partners'
data: how many DP-SGD steps the plan takes (rounds x local epochs x steps per epoch) and whether
a partner can calibrate its noise to its budget at all. A simulated partner would find out at its
first round and fail; here the same calibration runs up front, on the same rows and seeds, and a
plan that cannot work is refused with a message naming the key.
"""

from __future__ import annotations

from common.config import PartnerConfig, RunConfig, parse_budgets
from common.data.spec import load_run_partners
from common.data.vertical_spec import VerticalSpec
from common.learning.steps import num_steps, steps_per_epoch
from common.partner import round_seed
from common.privacy.budget import calibrate_plan, delta_refusal, plan_sample_rate
from common.vertical.settings import VerticalSettings

MAX_PLANNED_STEPS = 1_000_000
"""Most DP-SGD steps one simulated partner may plan over the whole run (the defaults plan about
1,500-3,000; a million steps is hours of training)."""


def _steps_key(run: RunConfig) -> str:
    """The key that most likely made the plan too long (rounds or local epochs)."""
    defaults = RunConfig()
    rounds = run.num_server_rounds / defaults.num_server_rounds
    epochs = run.local_epochs / defaults.local_epochs
    return "num-server-rounds" if rounds >= epochs else "local-epochs"


def check_plan(run: RunConfig) -> None:
    """Raise ValueError, naming the run config key, when a partner of `run`'s scenario could not
    carry out its plan: more than `MAX_PLANNED_STEPS` steps, or a budget its calibration cannot
    reach (the noisy count or DP-SGD would need more noise than any σ the accountant allows)."""
    partners = load_run_partners(run)
    budgets = parse_budgets(run.sim_budgets, run.sim_delta)
    for k, data in enumerate(partners):
        rows = len(data.train)
        per_epoch = steps_per_epoch(rows, sample_rate=plan_sample_rate(max(rows, 1),
                                                                        run.batch_size))
        per_round = num_steps(run.local_epochs, per_epoch)
        if per_round * run.num_server_rounds > MAX_PLANNED_STEPS:
            key = _steps_key(run)
            raise ValueError(
                f"{run.num_server_rounds} rounds x {run.local_epochs:g} local epochs plan "
                f"{per_round * run.num_server_rounds:,} DP-SGD steps for partner {data.partner} "
                f"({per_epoch} per epoch at batch-size {run.batch_size or 'by the plan rule'}), "
                f"more than the "
                f"{MAX_PLANNED_STEPS:,} a simulated partner may take; lower num-server-rounds or "
                f"local-epochs (run config key '{key}')")
        if not run.sim_dp:
            continue
        partner = PartnerConfig.from_node_config({"partition-id": k}, run)
        assert partner.epsilon is not None and partner.delta is not None
        key = "sim-budgets" if data.partner in budgets else "sim-epsilon"
        try:
            plan = calibrate_plan(
                epsilon=partner.epsilon, delta=partner.delta, num_train_rows=rows,
                batch_size=run.batch_size, local_epochs=run.local_epochs,
                planned_rounds=run.num_server_rounds, max_grad_norm=run.clip_norm,
                seed=round_seed(run.seed, partner, 0),
                count_epsilon_share=partner.count_epsilon_share)
            if reason := delta_refusal(plan):
                raise ValueError(reason)
        except ValueError as exc:
            raise ValueError(
                f"partner {data.partner} cannot calibrate DP-SGD to epsilon {partner.epsilon:g} "
                f"(delta {partner.delta:g}) for {run.num_server_rounds} rounds x "
                f"{run.local_epochs:g} local epochs: {exc}; raise the budget or plan fewer "
                f"steps (run config key '{key}')") from None


def check_vertical_plan(settings: VerticalSettings, seed: int,
                        spec: VerticalSpec | None = None) -> None:
    """Raise ValueError naming 'sim-epsilon' when a party of the vertical scenario (or of the
    vertical data `spec`) could not calibrate its releases to `settings` (the lender's label
    release first: it needs no data)."""
    from common.privacy.accounting import calibrate_noise_multiplier
    from common.vertical.parties import load_vertical_scenario
    from common.vertical.releases import RELEASE_TOLERANCE, calibrate_passive_releases

    try:
        calibrate_noise_multiplier(target_epsilon=settings.lender_epsilon, delta=settings.delta,
                                   sample_rate=1.0, steps=1, tolerance=RELEASE_TOLERANCE)
        calibrate_passive_releases(len(load_vertical_scenario(seed, spec=spec).train_labels),
                                   settings)
    except ValueError as exc:
        raise ValueError(f"the vertical parties cannot calibrate their releases to epsilon "
                         f"{settings.epsilon:g} (delta {settings.delta:g}): {exc}; raise the "
                         f"budget (run config key 'sim-epsilon')") from None
