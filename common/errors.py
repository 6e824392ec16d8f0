"""Every fedcredit exception, in one place (as pyca/cryptography keeps its `exceptions` module).

A `FedcreditError` carries a message meant for the person running the command: the CLI prints it
without a traceback. The classes also derive from the built-in they refine (`ValueError`,
`RuntimeError`), so callers that catch those keep working.
"""

from __future__ import annotations


class FedcreditError(Exception):
    """Base class of every error fedcredit raises on purpose."""


# ---------------------------------------------------------------------------- input data


class SchemaError(FedcreditError, ValueError):
    """A schema file is malformed."""


class DataValidationError(FedcreditError, ValueError):
    """A CSV does not match its schema; the message names file, column and row."""


# ---------------------------------------------------------------------------- privacy records


class CryptoError(FedcreditError, ValueError):
    """A key could not be read, or a signature did not verify."""


class LedgerError(FedcreditError, ValueError):
    """A ledger or receipts log failed verification; the message names file and line."""


class DatasetNotRecognised(LedgerError):
    """A partner's data file is not a version of the data set its lifetime odometer counts: it
    shares no record with it (`common.privacy.record_index`). A new data set needs its own
    odometer; continuing this one, or starting a fresh one silently, would misstate either."""


class LifetimeBudgetExceeded(FedcreditError, ValueError):
    """A release would take a data set's lifetime privacy spend (its odometer) over the
    partner's lifetime budget: it is refused before it happens."""


class AuditInputError(FedcreditError, ValueError):
    """The audit cannot start: a file or the keys directory is missing or unreadable."""


class PsiError(FedcreditError, ValueError):
    """Bad input to the PSI, or a message that does not fit the protocol."""


class ChannelError(FedcreditError, ValueError):
    """A vertical party's end-to-end channel: a peer key that does not verify, a sealed message
    that fails authentication or arrives replayed, or missing channel keys."""


# ---------------------------------------------------------------------------- federation


class TooFewPartners(FedcreditError, RuntimeError):
    """Fewer than `min-partners` usable updates arrived: the run stops cleanly."""


class PartyError(FedcreditError, RuntimeError):
    """A vertical party answered with an error (its refusal, or the kind of its failure)."""

    def __init__(self, party: str, reason: str) -> None:
        super().__init__(f"{party}: {reason}")
        self.party, self.reason = party, reason


class PartnerError(FedcreditError, RuntimeError):
    """What the coordinator learns of a partner-side failure: no data values, no paths."""


class Refusal(FedcreditError):
    """A vertical party's refusal, whose message it may send to the coordinator (no data
    values)."""


class FederationError(FedcreditError, RuntimeError):
    """A step of the local federation failed; the message says which and where its log is."""


# ---------------------------------------------------------------------------- simulation runs


class OutputDirError(FedcreditError, ValueError):
    """A run's --out cannot be used: it is a file, cannot be written, or holds files that no
    fedcredit run wrote (which fedcredit neither writes over nor deletes)."""


class SimulationFailed(FedcreditError, RuntimeError):
    """A simulated federation produced nothing to compare (every partner failed); the message
    carries the partners' own errors (in simulation the analyst holds all the data)."""
