"""The wire protocol, version 1: what travels in each WebSocket text frame.

Every frame is one JSON object with a ``type``. PROTOCOL.md is the contract
for clients; this module is its only implementation, and it knows nothing
about sockets or event loops, so it can be tested, fuzzed and reused alone.

Clients send ``{"type": "message", "text": ..., "client_id": ...}``. The
server sends ``joined`` once per connection, ``message`` for each message of
the room, ``ack`` to a sender once its message is stored, and ``error`` for a
frame it cannot use (the connection stays open).

Plain text frames are not accepted: ``42``, ``"hi"`` or ``[1]`` are both
valid text and valid JSON, so no rule could tell a chat line from a
malformed frame. ``python -m websockets`` users type the JSON object.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

__all__ = [
    "MAX_CLIENT_ID_LENGTH",
    "MESSAGE_PREFIX",
    "VERSION",
    "Auth",
    "FrameError",
    "Send",
    "ack_frame",
    "error_frame",
    "joined_frame",
    "message_frame",
    "message_id",
    "message_tail",
    "parse",
    "sequence",
]

VERSION = 1

#: A client_id is the client's own name for one message: random, short.
MAX_CLIENT_ID_LENGTH = 64
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1," + str(MAX_CLIENT_ID_LENGTH) + "}")

#: A Redis Stream entry id, or an in-memory epoch and counter.
ID_FORMS = re.compile(
    r"(?:(?P<milliseconds>[0-9]{1,20})-|(?P<epoch>[0-9a-f]{1,16}):)(?P<number>[0-9]{1,20})"
)
#: Redis Stream ids are two unsigned 64-bit integers.
MAX_ID_PART = 2**64 - 1

#: Every message frame starts with these characters, then its id and '"'.
#: Redis builds frames from it too (see redis_broker.py), and message_id()
#: reads the id back without parsing the whole frame.
MESSAGE_PREFIX = '{"type":"message","id":"'

_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
#: One JSON string, as ``_encode`` writes it (the C accelerator's function):
#: the two frames of every message are put together from these, a fifth of
#: the receive path's CPU when the encoder built a dict for each.
_string = json.encoder.encode_basestring


class FrameError(Exception):
    """A client frame the server cannot use; the answer is an error frame."""

    def __init__(self, error: str, reason: str, client_id: str | None = None) -> None:
        super().__init__(reason)
        #: One of: invalid_json, not_an_object, unknown_type, invalid_field,
        #: text_too_long, rejected, unavailable.
        self.error = error
        self.reason = reason
        self.client_id = client_id


@dataclass(frozen=True, slots=True)
class Auth:
    """A browser's token, in its first frame (browsers can't send headers);
    None when it has none, so that it hears at once that it needs one."""

    token: str | None


@dataclass(frozen=True, slots=True)
class Send:
    """A client's request to send ``text`` to its room."""

    text: str
    #: Made by the client; the same client_id is published at most once.
    client_id: str | None


def parse(frame: str, *, max_text_length: int) -> Send | Auth:
    """Read one client frame; raise :exc:`FrameError` if it is not usable.

    Fields other than those of the contract are ignored, ``from`` included:
    the server alone says who sent a message.
    """
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):  # RecursionError: [[[[...]]]]
        raise FrameError("invalid_json", "frame is not valid JSON") from None
    if not isinstance(data, dict):
        raise FrameError("not_an_object", "frame must be a JSON object")
    raw_id = data.get("client_id")
    # Answers name the client_id only when it is one.
    valid = isinstance(raw_id, str) and CLIENT_ID.fullmatch(raw_id) is not None
    client_id: str | None = raw_id if valid else None
    kind = data.get("type")
    if kind == "auth":
        token = data.get("token")
        if token is not None and not isinstance(token, str):
            raise FrameError("invalid_field", "token must be a string")
        return Auth(token or None)
    if kind != "message":
        raise FrameError("unknown_type", f"unknown type: {kind!r:.40}", client_id)
    if raw_id is not None and not valid:
        raise FrameError(
            "invalid_field",
            "client_id must be 1-64 letters, digits, '_', '.', ':' or '-'",
        )
    text = data.get("text")
    if not isinstance(text, str):
        raise FrameError("invalid_field", "text must be a string", client_id)
    if len(text) > max_text_length:
        raise FrameError(
            "text_too_long",
            f"text is longer than {max_text_length} characters",
            client_id,
        )
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:  # a lone surrogate, such as "\ud800"
            raise FrameError(
                "invalid_field", "text must be valid Unicode", client_id
            ) from None
    return Send(text, client_id)


def message_tail(room: str, sender: dict[str, str] | None, text: str) -> str:
    """Everything of a message frame after its id: it is stored this way, and
    the id is added where the message is stored (see :func:`message_frame`)."""
    author = "null" if sender is None else _encode(sender)
    return f'"room":{_string(room)},"from":{author},"text":{_string(text)}}}'


def message_frame(message_id: str, tail: str) -> str:
    """``{"type":"message","id":...,"room":...,"from":...,"text":...}``."""
    return f'{MESSAGE_PREFIX}{message_id}",{tail}'


def message_id(frame: str) -> str:
    """The id of a frame built by :func:`message_frame`."""
    start = len(MESSAGE_PREFIX)
    return frame[start : frame.index('"', start)]


def joined_frame(room: str, recovered: bool | None, last_id: str | None) -> str:
    """The first frame of every connection.

    ``recovered`` is None when the client asked for no ``since``; else it
    tells whether every message after ``since`` follows. ``last_id`` is the
    id of the newest message in the room's history: a client that has seen
    none resumes from it.
    """
    return _encode(
        {"type": "joined", "room": room, "recovered": recovered, "last_id": last_id}
    )


def ack_frame(client_id: str | None, message_id: str) -> str:
    """``{"type":"ack","client_id":...,"id":...}``."""
    client = "null" if client_id is None else _string(client_id)
    return '{"type":"ack","client_id":' + client + ',"id":' + _string(message_id) + "}"


def error_frame(error: FrameError) -> str:
    return _encode(
        {
            "type": "error",
            "error": error.error,
            "reason": error.reason,
            "client_id": error.client_id,
        }
    )


def sequence(message_id: str) -> tuple[str, int, int] | None:
    """Order ids of one room: a larger tuple is a later message.

    Two forms exist: a Redis Stream entry id, ``<milliseconds>-<n>``, and an
    in-memory id, ``<epoch>:<n>``. Ids of different forms, or of different
    epochs, don't compare: the first item of the tuple tells them apart.
    Return None for anything else.
    """
    match = ID_FORMS.fullmatch(message_id)
    if match is None or int(match["number"]) > MAX_ID_PART:
        return None
    if match["epoch"] is None:
        milliseconds = int(match["milliseconds"])
        if milliseconds > MAX_ID_PART:
            return None
        return ("", milliseconds, int(match["number"]))
    return (match["epoch"], 0, int(match["number"]))
