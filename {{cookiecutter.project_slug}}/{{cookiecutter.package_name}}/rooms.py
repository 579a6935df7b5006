"""The demo chat: yours to change or replace.

The plumbing (``hub.py``) owns the transport, the wire protocol, history,
resume, acknowledgements and fan-out. It asks this module two questions,
the only decisions that belong to the application:

* :meth:`Chat.may_join`: may a client join this room? A refusal answers the
  handshake with HTTP 403, before any WebSocket exists.
* :meth:`Chat.on_message`: what becomes of a message a client sent? Return
  the text to publish to the room, or ``None`` to refuse it (the sender
  gets an ``error`` frame, ``"error": "rejected"``).

Both run in the event loop, for every join and every message: keep them
quick, and never block.
"""

from __future__ import annotations

__all__ = ["Chat"]


class Chat:
    """Anyone may join any room; every message goes to the room as sent."""

    def may_join(self, room: str) -> bool:
        return True

    def on_message(self, room: str, text: str) -> str | None:
        return text
