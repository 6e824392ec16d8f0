"""The vertical party: every handler by message type, and the error replies."""

from __future__ import annotations

import logging
from collections.abc import Callable

from flwr.app import Context, Error, Message

from clients.vertical.alignment import AlignmentHandlers
from clients.vertical.finetune import FinetuneHandlers
from clients.vertical.stages import StageHandlers
from common.errors import Refusal
from common.protocol import (
    PSI_ALIGN,
    PSI_FINISH,
    PSI_OPEN,
    PSI_RESPOND,
    VERTICAL_REFUSAL_CODE,
    VFL_BOTTOM,
    VFL_EMBED,
    VFL_EVALUATE,
    VFL_FINETUNE,
    VFL_HELLO,
    VFL_LABELS,
    VFL_SCORE,
    VFL_SPLIT,
    VFL_TOP,
)

log = logging.getLogger(__name__)


class Party(AlignmentHandlers, StageHandlers, FinetuneHandlers):
    """One party's handlers over its own data and its Context state."""


HANDLERS: dict[str, Callable[[Party], Message]] = {
    VFL_HELLO: Party.hello,
    PSI_OPEN: Party.psi_open,
    PSI_RESPOND: Party.psi_respond,
    PSI_FINISH: Party.psi_finish,
    PSI_ALIGN: Party.psi_align,
    VFL_SPLIT: Party.split,
    VFL_LABELS: Party.labels,
    VFL_BOTTOM: Party.bottom,
    VFL_EMBED: Party.embed,
    VFL_TOP: Party.top,
    VFL_FINETUNE: Party.finetune,
    VFL_EVALUATE: Party.evaluate,
    VFL_SCORE: Party.score,
}


def handle(msg: Message, context: Context, overrides: dict) -> Message:
    """Run the handler of the message's type; a refusal or failure becomes an error reply that
    names only the party and the kind of failure (details stay in the party's own log)."""
    handler = HANDLERS[msg.metadata.message_type]
    try:
        return handler(Party(msg, context, overrides))
    except Refusal as refusal:
        log.warning("vertical party refuses %s: %s", msg.metadata.message_type, refusal)
        return Message(Error(code=VERTICAL_REFUSAL_CODE, reason=str(refusal)), reply_to=msg)
    except Exception as exc:  # noqa: BLE001 - every failure is reported, none leaks
        log.exception("vertical party failed in %s", msg.metadata.message_type)
        return Message(
            Error(
                code=VERTICAL_REFUSAL_CODE,
                reason=f"party failed ({type(exc).__name__}); details are in the party's own log",
            ),
            reply_to=msg,
        )
