"""Vertical mode, one party's side at a time: the parties' tables, the PSI that aligns them
(`psi`), the accounted one-shot releases, each party's stages, non-private fine-tuning, and the
whole run in one process as the reference, and the parties' end-to-end channel through the
coordinator (`channel`; see docs/vertical.md)."""
