"""The wire contract between the coordinator (ServerApp) and the partners (ClientApps).

Every message type, record name, metric key, config key, info key, mode, refusal code and fixed
refusal text that crosses the wire is defined here and only here, as Flower keeps its DP
wrappers' keys in `differential_privacy_constants.py`; so are the names of the state a partner
keeps in its Flower Context between messages. `server/` and `clients/` import these names and
never spell the strings themselves (`tests/common/test_protocol.py` checks that);
`docs/architecture.md` describes the messages. No Flower import: this is plain data.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------- every message

# Records of a message's RecordDict: the arrays (weights, embeddings), the numbers, the partner's
# strings, and the instruction's settings.
ARRAYS, METRICS, INFO, CONFIG = "arrays", "metrics", "info", "config"

# ---------------------------------------------------------------------------- horizontal rounds
# Flower's own message types `train` and `evaluate`; the coordinator sends `arrays` (the global
# weights) and, with `train`, a `config` record; a partner answers with `arrays` (its DP update,
# absent when it refuses), `metrics` and `info`.

# Round config of a train instruction (coordinator -> partner, `config` record).
SERVER_ROUND = "server-round"
LOCAL_EPOCHS = "local-epochs"
LEARNING_RATE = "learning-rate"
# True when the partner should also evaluate the global model this train message carries (the
# previous round's aggregate) on its own test split, and add the metrics to its train reply under
# `EVALUATION_PREFIX`: one message per round instead of a separate evaluate message. The last
# round, and every round under secure aggregation, still evaluates with an evaluate message.
EVALUATE_RECEIVED = "evaluate-received"
# The run's encoded feature layout (`common.data.layout`: canonical JSON of schema metadata,
# never data) and its SHA-256, in the config of every train and evaluate instruction; a partner
# refuses unless its own schema's layout is identical, and echoes its layout's hash in every
# reply (`info`; under secure aggregation inside the metrics, see `SECURE_INFO_KEYS`).
FEATURE_LAYOUT = "feature-layout"
FEATURE_LAYOUT_SHA256 = "feature-layout-sha256"

# Records a partner's reply may hold; the coordinator rejects a reply with any other.
ALLOWED_RECORDS = frozenset({ARRAYS, METRICS, INFO})

# Train reply metrics (partner -> coordinator, `metrics` record); the coordinator rejects any
# other key. The vertical stages reuse the ε figures (`EPSILON_SPENT`, `EPSILON_BUDGET`).
NUM_EXAMPLES = "num-examples"
EPSILON_SPENT = "epsilon-spent"
EPSILON_BUDGET = "epsilon-budget"
DELTA = "delta"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
STEPS = "steps"
ROUNDS_TRAINED = "rounds-trained"
TRAIN_LOSS = "train-loss"
REFUSED = "refused"  # 1.0 in a refusing partner's metrics
TRAIN_METRIC_KEYS = (NUM_EXAMPLES, EPSILON_SPENT, EPSILON_BUDGET, DELTA, NOISE_MULTIPLIER,
                     SAMPLE_RATE, STEPS, ROUNDS_TRAINED, TRAIN_LOSS, REFUSED)
# Evaluate reply metrics (partner -> coordinator): the partner's own test split.
EVALUATE_METRIC_KEYS = (NUM_EXAMPLES, "auc", "ks", "gini", "brier", "pr-auc", "log-loss")
# The same metrics inside a train reply (`EVALUATE_RECEIVED`), prefixed.
EVALUATION_PREFIX = "evaluation."
FOLDED_EVALUATE_METRIC_KEYS = tuple(EVALUATION_PREFIX + key for key in EVALUATE_METRIC_KEYS)

# Reply info (partner -> coordinator, `info` record): who it is, why it refused ('' if it did
# not), the hash of the ledger entry it wrote for the round ('' if it keeps none).
PARTNER = "partner"
REFUSAL_REASON = "refusal-reason"
LEDGER_ENTRY_SHA256 = "ledger-entry-sha256"
# Under secure aggregation the partner's info travels inside its train reply's metrics, with the
# hash of the update it masked.
UPDATE_SHA256 = "update-sha256"
SECURE_INFO_KEYS = (PARTNER, REFUSAL_REASON, LEDGER_ENTRY_SHA256, UPDATE_SHA256,
                    FEATURE_LAYOUT_SHA256)

# A partner that refuses a secure-aggregation round drops out of it with an error whose reason is
# this prefix followed by a JSON object: its info (`PARTNER`, `REFUSAL_REASON`,
# `LEDGER_ENTRY_SHA256`) and, under `METRICS`, its privacy metrics (what a plain reply holds).
REFUSAL_PREFIX = "fedcredit-refusal "
# Error code of that refusal (Flower's own codes are small integers).
SECURE_REFUSAL_CODE = 4030

# Refusal reasons sent when the partner's ledger cannot be opened: fixed texts, because the
# exception's own message names local files and OS errors (those go to the partner's log only).
LEDGER_UNTRUSTED = ("the partner's ledger failed verification; refusing rather than trust or "
                    "reset it (details in the partner's log)")
SIGNING_KEY_UNUSABLE = ("the partner's ledger signing key is unreadable or invalid (details in "
                        "the partner's log)")
# A partner-side failure reaches the coordinator as an error reply whose reason ends with this
# text (no data values, no paths): the partner's name, so a partner that failed every round is
# still named, and the exception type.
PARTNER_FAILURE_TEXT = ("partner {name!r} failed ({kind}); details are in the partner's own "
                        "log")
PARTNER_FAILURE_PATTERN = r"partner '(?P<name>[^'\n]{1,100})' failed \("
"""A regular expression that finds the partner's name in that text."""
LIFETIME_BUDGET_EXHAUSTED = ("the partner's lifetime privacy budget for this data set (its "
                             "odometer, across runs and ledgers) cannot cover this run's plan "
                             "or round (details in the partner's log)")
# Refusal of a partner whose data file is not a version of the data set its lifetime odometer
# counts (`common.errors.DatasetNotRecognised`): not an untrusted ledger, and no fresh budget.
DATASET_NOT_RECOGNISED = ("the partner's data file shares no record with the data set its "
                          "lifetime odometer counts; refusing rather than start a fresh "
                          "lifetime budget (a new data set needs its own odometer; details in "
                          "the partner's log)")
# Refusal of a deployed partner whose instruction announces no feature layout.
LAYOUT_NOT_ANNOUNCED = ("the coordinator announced no feature layout for this run; a partner "
                        "trains and evaluates only on a layout identical to its own schema's")
# Refusal of a partner whose budget cannot cover the run's plan (rounds x local epochs at its
# sample rate): a fixed text, because the calibration's own message names q, which derives from
# its noisy count before that count is logged (the odometer has reserved it).
PLAN_UNREACHABLE = ("the partner cannot calibrate DP-SGD to its budget for this run's plan "
                    "(rounds x local epochs); details in the partner's log")
# Refusal of a deployed partner asked for evaluation metrics without `release-metrics=true` in
# its node config: metrics of its test rows are not DP releases, so by default none leave it.
METRICS_NOT_RELEASED = ("this partner does not release evaluation metrics (computed from its "
                        "records outside its DP guarantee; node config key 'release-metrics')")
# Coordinator round-config keys a partner never lets change its calibrated mechanism.
IGNORED_MECHANISM_KEYS = (NOISE_MULTIPLIER, SAMPLE_RATE, "batch-size", "max-grad-norm",
                          "clip-norm")

# A legacy (SecAgg+) train instruction holds the global weights in this array record, and in its
# config (scalars only) the names of those arrays, in order, joined by the separator.
SECURE_PARAMETERS = "fitins.parameters"
ARRAY_KEYS = "array-keys"
ARRAY_KEYS_SEPARATOR = ","

# ---------------------------------------------------------------------------- vertical runs
# Flower message types `<category>.<action>`, in the order of a run. The coordinator sends each
# to the parties named and only relays what comes back; a party answers only the ones of its
# role and refuses the others.

VFL_HELLO = "query.vfl_hello"  # every node -> `info`: `PARTY`, its name
PSI_OPEN = "query.psi_open"  # lender, `config`: `PSI_RUN_ID` -> one `psi.<partner>` record each
PSI_RESPOND = "query.psi_respond"  # passive, `PSI`: the lender's blinded set -> `PSI`: its reply
# Lender, the `psi.<partner>` replies -> one `psi.<partner>` alignment each and `SPLIT`.
PSI_FINISH = "query.psi_finish"
PSI_ALIGN = "query.psi_align"  # passive, `PSI`: its alignment -> `info`: `NUM_ALIGNED`
VFL_SPLIT = "query.vfl_split"  # passive, `config`: the split -> `info`: `NUM_TRAIN`, `NUM_TEST`
VFL_LABELS = "query.vfl_labels"  # lender, `config`: `MODE` -> stage 1: `LABELS` (+ ε metrics)
# Passive, `LABELS` -> stages 2-3: `EMBEDDINGS` of its training rows (+ ε and mechanism metrics).
VFL_BOTTOM = "train.vfl_bottom"
# Passive, `config`: `MODE` and maybe `CUSTOMER` -> stage 5: clean `EMBEDDINGS` of its test rows
# or of that customer.
VFL_EMBED = "query.vfl_embed"
# Lender, non-private: the embeddings, `config`: `STEP` -> `grads.<partner>` records and `info`:
# `STEPS` and the next `BATCH` (absent after the last step).
VFL_TOP = "train.vfl_top"
# Passive, non-private: `GRADS`, `config`: `PREVIOUS_BATCH`, `BATCH` -> the next batch's
# `EMBEDDINGS`.
VFL_FINETUNE = "train.vfl_finetune"
# Lender: `train.<partner>` and `test.<partner>` embeddings and (DP) their `NOISE_STD` -> stage 4,
# then metrics only: `setting_metric(setting, metric)` per setting.
VFL_EVALUATE = "evaluate.vfl_score"
VFL_SCORE = "query.vfl_score"  # lender, `customer.<partner>` embeddings -> metrics: `SCORE`
VERTICAL_MESSAGE_TYPES = (VFL_HELLO, PSI_OPEN, PSI_RESPOND, PSI_FINISH, PSI_ALIGN, VFL_SPLIT,
                          VFL_LABELS, VFL_BOTTOM, VFL_EMBED, VFL_TOP, VFL_FINETUNE, VFL_EVALUATE,
                          VFL_SCORE)

# Modes of a run's stages (`config` record, `MODE`); a deployed party runs `DP` only.
MODE = "mode"
DP, NON_PRIVATE = "dp", "non-private"

# Records of the vertical messages.
PSI = "psi"  # a PSI message (blinded set, reply or alignment) to or from a passive party
SPLIT = "split"  # the lender's split: `TEST_POSITIONS`, `NUM_ALIGNED` and `PSI_TRANSCRIPT`
LABELS = "labels"  # stage 1 labels; its one array has the same name
# Embeddings a passive party sends; under DP its one array has the same name, non-private one
# array per setting it is in.
EMBEDDINGS = "embeddings"
GRADS = "grads"  # the lender's gradients for one passive party, one array per setting
NOISE_STD = "noise-std"  # per passive party: the std of its released embeddings' noise

# Records the coordinator relays per passive party: `party_record(prefix, party)`.
TRAIN_ROWS = "train"  # DP: its released embeddings of the training rows
TEST_ROWS = "test"  # its clean embeddings of the test rows
CUSTOMER = "customer"  # its clean embeddings of one customer; also the `config` key of its ID
PARTY_RECORD_PREFIXES = (PSI, TRAIN_ROWS, TEST_ROWS, GRADS, CUSTOMER)
_PARTY_SEPARATOR = "."

# Config keys of the vertical instructions.
PSI_RUN_ID = "psi-run-id"
TEST_POSITIONS = "test-positions"
NUM_ALIGNED = "num-aligned"
# The digest of one partner's PSI session (blinded set, reply, alignment; `common.vertical.psi.
# transcript_digest`): in the lender's sealed split, and in the partner's alignment state.
PSI_TRANSCRIPT = "psi-transcript"
# In a blinded set's or reply's `PSI` record: its sender's Ed25519 signature of its session digest
# up to that message (`common.vertical.psi.sign_session`); checked before the message is used.
PSI_SIGNATURE = "psi-signature"
STEP = "step"  # `FIT_TOPS` fits the stacked tops; then the fine-tuning step from 0
FIT_TOPS = -1
BATCH = "batch"  # positions of the next batch among the training rows (also `info` of `VFL_TOP`)
PREVIOUS_BATCH = "previous-batch"  # the batch the relayed gradients are for

# Info keys of the vertical replies.
PARTY = "party"
NUM_TRAIN = "num-train"
NUM_TEST = "num-test"

# Metrics of the vertical replies: the lender's stage 1, a passive party's stages 2-3, a score.
LABEL_NOISE_MULTIPLIER = "label-noise-multiplier"
BOTTOM_SIGMA = "bottom-sigma"
BOTTOM_SAMPLE_RATE = "bottom-sample-rate"
BOTTOM_STEPS = "bottom-steps"
EMBEDDING_NOISE_MULTIPLIER = "embedding-noise-multiplier"
SCORE = "score"
_SETTING_SEPARATOR = "/"

# Error code of a vertical party's refusal or failure, with a reason naming only the party and
# the kind of failure.
VERTICAL_REFUSAL_CODE = 4031

# The parties' end-to-end channel (`common.vertical.channel`); every party-to-party payload but
# the PSI's messages travels sealed, so the coordinator relays ciphertext it cannot read (the
# blinded sets and replies are signed, `PSI_SIGNATURE`; the alignment is vouched for in the split).
# `CHANNEL`: signed ephemeral keys by party name, in the `query.psi_open` reply (the lender's),
# the `query.psi_respond` instruction (the lender's) and reply (the passive party's), and the
# `query.psi_finish` instruction (both passive parties'). `SEALED`: sealed blobs, a list per
# peer: in a party's reply keyed by recipient, in an instruction keyed by sender.
CHANNEL = "channel"
SEALED = "sealed"
# A sealed payload names its arrays with the record and config names above (`LABELS`,
# `EMBEDDINGS`, `NOISE_STD`, `CUSTOMER`, `TEST_POSITIONS`, `BATCH`, `PREVIOUS_BATCH`) and, for
# per-setting arrays, the setting names.

# ---------------------------------------------------------------------------- partner-local state
# Context state records a partner keeps between messages (never sent).

PARTNER_STATE = "fedcredit-partner-state"  # a horizontal partner's `PartnerState`

# A vertical party's records: its PSI session (`ROWS` or the lender's session keys, and `RUN`),
# its alignment (`ALIGNED` rows, `TEST` positions, the PSI `RUN` id), its DP bottom model (with
# its `CENTRE`), the steps it did once (`STEP_*`), the lender's DP tops and, non-private, one
# fine-tuning state per setting (`non_private_state`).
PSI_STATE = "vfl.psi"
ALIGN_STATE = "vfl.align"
BOTTOM_STATE = "vfl.bottom"
DONE_STATE = "vfl.done"
DP_TOPS_STATE = "vfl.top.dp"
NON_PRIVATE_STATE_PREFIX = "vfl.np"
ROWS, RUN, ALIGNED, TEST, CENTRE = "rows", "run", "aligned", "test", "centre"
STEP_PSI, STEP_SPLIT, STEP_LABELS, STEP_BOTTOM = "psi", "split", "labels", "bottom"
# The end-to-end channels of a vertical party (keys and counters, `Channels.to_state`), and the
# lender's scoring record: the `SCORED` customers of this run, in order.
CHANNEL_STATE = "vfl.channel"
SCORED_STATE = "vfl.scored"
SCORED = "scored"
_EVALUATION_STEP_PREFIX = "evaluate-"


def party_record(prefix: str, party: str) -> str:
    """The name of the record a relayed message holds for `party` (e.g. `psi.bank`)."""
    if prefix not in PARTY_RECORD_PREFIXES:
        raise ValueError(f"{prefix!r} is not one of {PARTY_RECORD_PREFIXES}")
    return f"{prefix}{_PARTY_SEPARATOR}{party}"


def setting_metric(setting: str, metric: str) -> str:
    """The key of one setting's metric in the lender's evaluation reply."""
    return f"{setting}{_SETTING_SEPARATOR}{metric}"


def split_setting_metric(key: str) -> tuple[str, str]:
    """(setting, metric) of a `setting_metric` key."""
    setting, metric = key.rsplit(_SETTING_SEPARATOR, 1)
    return setting, metric


def non_private_state(setting: str) -> str:
    """The state record of one setting's non-private fine-tuning (bottom or top)."""
    return f"{NON_PRIVATE_STATE_PREFIX}.{setting}"


def evaluation_step(mode: str) -> str:
    """The once-per-run step of the lender's evaluation in `mode`."""
    return f"{_EVALUATION_STEP_PREFIX}{mode}"


# ---------------------------------------------------------------------------- vertical guards
# What a malicious coordinator cannot steer (issue 21). The lender's sealed split (`query.psi_
# finish`) also holds `SCORES_RELEASED` (1 when it scores customers in this run: its node config
# `release-scores` on and `max-scored-customers` > 0); a passive party answers scoring requests
# only then, at most its `max-vouchers` per run (counted in `VOUCHER_STATE`/`VOUCHERS`), and
# every voucher it seals holds `VOUCHED` (1: the customer's clean embedding; 0: zeros of the same
# shape for a customer it does not know or trains on), so its answers all look alike.
SCORES_RELEASED = "scores-released"
VOUCHED = "vouched"
VOUCHER_STATE = "vfl.vouchers"
VOUCHERS = "vouchers"
# Refusal texts, after the party's name (`str.format` fields in braces).
TEST_SHARE_REFUSED = ("the lender's split puts {num_test} of {num_aligned} aligned customers in "
                      "the test set, whose embeddings leave without DP: more than its node config "
                      "'max-test-fraction' = {cap:g} allows")
ALIGNMENT_REFUSED = ("the PSI alignment the coordinator relayed is not the one the lender sent, "
                     "by its sealed split; this alignment is refused")
PSI_NOT_AUTHENTIC = ("the PSI message relayed as {sender}'s is not signed by {sender} for this "
                     "session (made up or altered on the way); it is neither answered nor matched")
NOT_SCORING = "the lender does not score customers in this run, so it answers no scoring request"
VOUCHERS_SPENT = ("it answered its maximum of {cap} scoring requests in this run (node config "
                  "'max-vouchers')")
SCORE_DECLINED = "not known to every party, or a training customer"
