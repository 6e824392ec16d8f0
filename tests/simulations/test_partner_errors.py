"""What the coordinator learns of a partner's failure (issue 12 item 4; `clients.app._guarded`):
in simulation the partner's own error, since the analyst holds every partner's data and there is
no partner log to read (before: 'partner failed (ValueError); details are in the partner's own
log', also in simulation); a deployed partner still sends only its name and the error's kind."""

from __future__ import annotations

from typing import cast

import pytest
from flwr.app import Context, Message, RecordDict

from clients.app import _guarded
from common.config import RunConfig
from common.errors import PartnerError
from common.protocol import PARTNER_FAILURE_TEXT

MESSAGE = cast(Message, None)  # the handler fails before reading it
SECRET = "row 7 of /data/bank.csv: Income 'abc' is not a number"


@_guarded
def _failing(msg: Message, context: Context, overrides: dict | None = None) -> Message:
    raise ValueError(SECRET)


def _context(node: dict) -> Context:
    return Context(run_id=1, node_id=1, node_config=node, state=RecordDict(), run_config={})


def test_a_simulated_partner_reports_its_own_error() -> None:
    with pytest.raises(PartnerError) as failed:
        _failing(MESSAGE, _context({"partition-id": 2}), RunConfig().to_flower())
    text = str(failed.value)
    assert text.startswith("partner 'bank' failed (ValueError)")  # named, as deployed ones are
    assert SECRET in text


def test_a_deployed_partner_reports_only_its_name_and_the_errors_kind() -> None:
    with pytest.raises(PartnerError) as failed:
        _failing(MESSAGE, _context({"partner": "bank", "data-path": "/data/bank.csv"}), {})
    assert str(failed.value) == PARTNER_FAILURE_TEXT.format(name="bank", kind="ValueError")
    assert "/data" not in str(failed.value) and "Income" not in str(failed.value)


def test_a_federation_that_trained_nothing_stops_the_run_with_the_partners_errors(
        tmp_path) -> None:
    """Before, the other settings ran anyway and the audit of no ledgers ended in a traceback
    (`AuditInputError: no ledger given`)."""
    from common.errors import SimulationFailed
    from common.outputs import RunLayout
    from simulations.simulate.horizontal import audit_run, check_trained

    reason = "partner 'bank' failed (ValueError): cannot reach epsilon 1e-10"
    with pytest.raises(SimulationFailed, match="federated_dp trained nothing.*cannot reach"):
        check_trained("federated_dp", {"status": "stopped", "message": reason,
                                       "rounds": [{"accepted": [], "failed": {"bank": reason}}]})
    check_trained("federated", {"status": "stopped", "message": "",
                                "rounds": [{"accepted": ["bank", "lender"]}]})
    audit = audit_run(RunLayout(tmp_path), ["bank"])
    assert audit["ok"] is False and "no partner wrote a privacy ledger" in audit["findings"][0]
