"""Benchmarks that print figures and assert nothing: horizontal (`fedcredit bench`), vertical and
PSI (`python -m simulations.bench.vertical`, `python -m simulations.bench.psi`)."""
