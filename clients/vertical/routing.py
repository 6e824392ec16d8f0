"""Registration of every vertical message type on the ClientApp, without loading the handlers.

Flower starts a fresh ClientApp process for every message, so `clients.app` must import fast:
the party's handlers (torch, the vertical stages) load only when a vertical message arrives.
"""

from __future__ import annotations

from flwr.app import Context, Message, MessageType
from flwr.clientapp import ClientApp

from common.protocol import VERTICAL_MESSAGE_TYPES


def register_vertical(app: ClientApp, overrides: dict) -> None:
    """Register every vertical message type on `app` ('<category>.<action>' routing)."""
    registrars = {
        MessageType.QUERY: app.query,
        MessageType.TRAIN: app.train,
        MessageType.EVALUATE: app.evaluate,
    }

    def run(msg: Message, context: Context) -> Message:
        from clients.vertical.registry import handle

        return handle(msg, context, overrides)

    for message_type in VERTICAL_MESSAGE_TYPES:
        category, action = message_type.split(".")
        registrars[category](action)(run)
