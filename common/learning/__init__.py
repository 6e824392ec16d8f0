"""Learning: the credit-risk model, the one training loop (DP-SGD via Opacus when given a
mechanism) and evaluation routine, credit metrics, and privacy-free personalisation."""
