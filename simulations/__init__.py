"""The `fedcredit` CLI and what it drives: simulations with baselines and reports, the audit
CLI, real and local deployments, benchmarks. May import `server/`, `clients/` and `common/`."""
