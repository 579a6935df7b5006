"""The demo chat: yours to change or replace.

The plumbing (``hub.py``) owns the transport, the wire protocol, history,
resume, acknowledgements and fan-out. It asks this module two questions,
the only decisions that belong to the application:

* :meth:`Chat.may_join`: may this identity join this room? A refusal
  answers the handshake with HTTP 403, before any WebSocket exists (or,
  for a browser, which sends its token in its first frame, closes the
  connection with 1008).
* :meth:`Chat.on_message`: what becomes of a message a client sent? Return
  the text to publish to the room, or ``None`` to refuse it (the sender
  gets an ``error`` frame, ``"error": "rejected"``).

``identity`` is who the client's token says it is (``identity.sub``,
``identity.name``), or ``None`` when the app trusts no tokens (neither
``JWT_SECRET`` nor ``JWKS_URL`` is set) and anyone may connect. A token's
``rooms`` claim has already been checked: these hooks add your own rules.

Both run in the event loop, for every join and every message: keep them
quick, and never block.
"""

from __future__ import annotations

from .auth import Identity

__all__ = ["Chat"]


class Chat:
    """Anyone may join any room; every message goes to the room as sent."""

    def may_join(self, identity: Identity | None, room: str) -> bool:
        return True

    def on_message(self, identity: Identity | None, room: str, text: str) -> str | None:
        return text
