"""A Grid that collects replies as soon as they arrive.

Flower 1.41's deployed Grid (`HttpGrid.send_and_receive`) pulls once right after pushing, then
sleeps a fixed 3 s between pulls, so every send-and-receive costs at least 3 s and ends on a 3 s
step: one per phase of a plain round, four per SecAgg+ round. `PromptGrid` wraps any Grid and
polls every `pull_interval` seconds instead (as Flower's in-memory simulation Grid does); every
other call goes to the wrapped Grid unchanged.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo  # pylint: disable=E0611
from flwr.serverapp import Grid
from flwr.supercore.run import Run

PULL_INTERVAL_S = 0.1


class PromptGrid(Grid):
    """`grid`, with replies pulled every `pull_interval` seconds until all arrive or time out."""

    def __init__(self, grid: Grid, pull_interval: float = PULL_INTERVAL_S) -> None:
        self.grid, self.pull_interval = grid, pull_interval

    def set_run(self, run: Run) -> None:
        """Set the run this Grid operates in."""
        self.grid.set_run(run)

    @property
    def run(self) -> Run:
        """The run this Grid operates in."""
        return self.grid.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int,
                       group_id: str, ttl: float | None = None) -> Message:
        """A new message for `dst_node_id` (run and source node set by the wrapped Grid)."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """IDs of the connected nodes."""
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        """The connected nodes."""
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Send `messages`; their IDs."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """The replies that have arrived to `message_ids`."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *,
                         timeout: float | None = None) -> Iterable[Message]:
        """Push `messages`, then pull every `pull_interval` s until each has a reply or
        `timeout` seconds have passed (None: wait as long as it takes)."""
        waiting = set(self.push_messages(messages))
        deadline = time.monotonic() + (timeout or 0.0)
        replies: list[Message] = []
        while timeout is None or time.monotonic() < deadline:
            arrived = list(self.pull_messages(waiting))
            replies.extend(arrived)
            waiting.difference_update(m.metadata.reply_to_message_id for m in arrived)
            if not waiting:
                break
            time.sleep(self.pull_interval)
        return replies
