"""Frames the server writes are the JSON the protocol documents, for any text."""

from __future__ import annotations

import json

import pytest

from {{ cookiecutter.package_name }} import protocol

TEXTS = [
    "hello",
    "",
    'quotes " and \\ backslashes',
    "control \x00\x01\x1f and \t\n\r",
    "non-ASCII: café, 日本語, emoji 🎉",
    "line separators \u2028\u2029",
    "</script><script>alert(1)</script>",
]
SENDERS = [None, {"sub": "alice", "name": 'Zoë "Z" \\ O\'Brien'}]


def compact(data: object) -> str:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


@pytest.mark.parametrize("sender", SENDERS, ids=["anonymous", "named"])
@pytest.mark.parametrize("text", TEXTS)
def test_a_message_frame_is_the_compact_json_of_its_fields(
    text: str, sender: dict[str, str] | None
) -> None:
    tail = protocol.message_tail("lobby", sender, text)
    frame = protocol.message_frame("1a2b3c4d:7", tail)
    fields = {"type": "message", "id": "1a2b3c4d:7", "room": "lobby"}
    assert frame == compact({**fields, "from": sender, "text": text})
    assert json.loads(frame)["text"] == text


@pytest.mark.parametrize("client_id", [None, "c-1", "A.b:c_d-9"])
def test_an_ack_is_the_compact_json_of_its_fields(client_id: str | None) -> None:
    frame = protocol.ack_frame(client_id, "1700000000000-0")
    fields = {"type": "ack", "client_id": client_id, "id": "1700000000000-0"}
    assert frame == compact(fields)
