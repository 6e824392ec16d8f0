"""fedcredit simulations: scenarios, baselines, reports, CLI."""
