"""The wire contract between the coordinator (ServerApp) and the partners (ClientApps).

Every record name, metric key, config key, message type, refusal code and fixed refusal text that
crosses the wire is defined here and only here, as Flower keeps its DP wrappers' keys in
`differential_privacy_constants.py`. `server/` and `clients/` import these names and never spell
the strings themselves (a test checks that); `docs/architecture.md` describes the messages.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- horizontal rounds

# Records a partner's reply may hold; the coordinator rejects a reply with any other.
ARRAYS, METRICS, INFO, CONFIG = "arrays", "metrics", "info", "config"
ALLOWED_RECORDS = frozenset({ARRAYS, METRICS, INFO})

# Keys a partner puts in its train reply metrics; the coordinator rejects anything else.
TRAIN_METRIC_KEYS = ("num-examples", "epsilon-spent", "epsilon-budget", "delta",
                     "noise-multiplier", "sample-rate", "steps", "rounds-trained", "train-loss",
                     "refused")
EVALUATE_METRIC_KEYS = ("num-examples", "auc", "ks", "gini", "brier", "pr-auc", "log-loss")
# Under secure aggregation the partner's info travels inside its train reply's metrics.
SECURE_INFO_KEYS = ("partner", "refusal-reason", "ledger-entry-sha256", "update-sha256")
# A partner that refuses a secure-aggregation round drops out of it with an error whose reason is
# this prefix followed by a JSON object: its info and privacy metrics (what a plain reply holds).
REFUSAL_PREFIX = "fedcredit-refusal "
# Refusal reasons sent when the partner's ledger cannot be opened: fixed texts, because the
# exception's own message names local files and OS errors (those go to the partner's log only).
LEDGER_UNTRUSTED = ("the partner's ledger failed verification; refusing rather than trust or "
                    "reset it (details in the partner's log)")
SIGNING_KEY_UNUSABLE = ("the partner's ledger signing key is unreadable or invalid (details in "
                        "the partner's log)")
# Coordinator round-config keys a partner never lets change its calibrated mechanism.
IGNORED_MECHANISM_KEYS = ("noise-multiplier", "sample-rate", "batch-size", "max-grad-norm",
                          "clip-norm")

# Error code of a refusal under secure aggregation (Flower's own codes are small integers).
SECURE_REFUSAL_CODE = 4030
# A legacy (SecAgg+) train instruction holds the global weights in this array record.
SECURE_PARAMETERS = "fitins.parameters"

# ---------------------------------------------------------------------------- vertical runs

# Error code of a vertical party's refusal, with a reason it may send.
VERTICAL_REFUSAL_CODE = 4031

# ---------------------------------------------------------------------------- partner-local state

# Context state records a partner keeps between messages (never sent).
PARTNER_STATE = "fedcredit-partner-state"
