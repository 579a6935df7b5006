"""Hostile protocol frames against a running app: the documented answer, every time.

The frames are valid WebSocket text (test_hostile.py covers the framing):
JSON that is deep, repetitive, huge, oddly typed, or carries lone
surrogates, which are valid JSON (``"\\ud800"``) and valid UTF-8 on the wire
but cannot be encoded again. Each gets the answer PROTOCOL.md documents; the
connection stays open, a good client is served afterwards, and nothing is
logged at ERROR.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from conftest import (
    Started,
    assert_nothing_logged_at_error,
    chat_frame,
    echo,
    launch_app,
    next_frame,
)

MAX_TEXT_LENGTH = 100
LIMITS = {
    "MAX_MESSAGE_SIZE": "65536",  # room for tens of thousands of brackets
    "MAX_TEXT_LENGTH": str(MAX_TEXT_LENGTH),
    "MAX_MESSAGES_PER_SECOND": "1000",
}

#: Every ``error`` a client frame can get (PROTOCOL.md).
ERRORS = {"invalid_json", "not_an_object", "unknown_type", "invalid_field", "text_too_long"}
CLIENT_ID = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CLIENT_ID_RULE = "client_id must be 1-64 letters, digits, '_', '.', ':' or '-'"


@pytest.fixture(scope="module")
def app(default_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Started]:
    with contextlib.ExitStack() as stack:
        yield launch_app(default_project, tmp_path_factory.mktemp("frames"), stack, **LIMITS)


@pytest.fixture
def client(app: Started) -> Iterator[ClientConnection]:
    with connect(app.ws_url("/ws/frames"), max_size=2**20) as client:
        assert next_frame(client)["type"] == "joined"
        yield client


_markers = itertools.count()


def answers_to(client: ClientConnection, frame: str) -> list[dict[str, Any]]:
    """Everything the server sends back for ``frame``: the frames that come
    before the answers to a marker message sent right after it."""
    marker = f"marker-{next(_markers)}"
    client.send(frame)
    client.send(chat_frame(marker, marker))
    answers = []
    while True:
        answer = next_frame(client)
        if answer.get("type") == "message" and answer.get("text") == marker:
            break
        answers.append(answer)
    assert next_frame(client) == {"type": "ack", "client_id": marker, "id": answer["id"]}
    return answers


def refused(error: str, reason: str, client_id: str | None = None) -> list[dict[str, Any]]:
    return [{"type": "error", "error": error, "reason": reason, "client_id": client_id}]


def delivered(answers: list[dict[str, Any]], client_id: str | None) -> str:
    """The text of the one message these answers deliver, checking its ack."""
    message, ack = answers
    assert message["type"] == "message" and ack["type"] == "ack", answers
    assert ack == {"type": "ack", "client_id": client_id, "id": message["id"]}
    return message["text"]


NOT_JSON = ("invalid_json", "frame is not valid JSON")
TEXT_NOT_STRING = ("invalid_field", "text must be a string")

#: (name, frame, expected answers); None: a message is delivered (checked apart).
PROBES: list[tuple[str, str, list[dict[str, Any]]]] = [
    ("30,000 nested arrays", "[" * 30_000 + "]" * 30_000, refused(*NOT_JSON)),
    ("12,000 nested objects", '{"":' * 12_000 + "1" + "}" * 12_000, refused(*NOT_JSON)),
    (
        "deep nesting in an ignored field",
        '{"type":"message","text":"hi","x":' + "[" * 10_000 + "]" * 10_000 + "}",
        refused(*NOT_JSON),
    ),
    ("a 5,000-digit number", '{"type":"message","text":' + "9" * 5000 + "}", refused(*NOT_JSON)),
    ("a number past float range", '{"type":"message","text":1e999999}', refused(*TEXT_NOT_STRING)),
    ("NaN", '{"type":"message","text":NaN}', refused(*TEXT_NOT_STRING)),
    ("a byte order mark", '\ufeff{"type":"message","text":"hi"}', refused(*NOT_JSON)),
    ("null", "null", refused("not_an_object", "frame must be a JSON object")),
    ("an empty object", "{}", refused("unknown_type", "unknown type: None")),
    (
        "a duplicate type key: the last one counts",
        '{"type":"message","type":"shout"}',
        refused("unknown_type", "unknown type: 'shout'"),
    ),
    (
        "a lone surrogate in text",
        '{"type":"message","text":"a\\ud800b","client_id":"s-1"}',
        refused("invalid_field", "text must be valid Unicode", "s-1"),
    ),
    (
        "a lone low surrogate in text",
        '{"type":"message","text":"\\udfff"}',
        refused("invalid_field", "text must be valid Unicode"),
    ),
    (
        "a lone surrogate in client_id",
        '{"type":"message","text":"hi","client_id":"\\ud800"}',
        refused("invalid_field", CLIENT_ID_RULE),
    ),
    (
        "a lone surrogate in type",
        '{"type":"\\ud800"}',
        refused("unknown_type", "unknown type: '\\ud800'"),
    ),
    (
        "a 65-character client_id",
        chat_frame("hi", "c" * 65),
        refused("invalid_field", CLIENT_ID_RULE),
    ),
    (
        "a numeric client_id",
        '{"type":"message","text":"hi","client_id":7}',
        refused("invalid_field", CLIENT_ID_RULE),
    ),
    (
        "text one past MAX_TEXT_LENGTH, in astral characters",
        chat_frame("😀" * (MAX_TEXT_LENGTH + 1), "t-1"),
        refused("text_too_long", f"text is longer than {MAX_TEXT_LENGTH} characters", "t-1"),
    ),
    (
        "a token that is not a string",
        '{"type":"auth","token":[]}',
        refused("invalid_field", "token must be a string"),
    ),
    ("an auth frame after joining: ignored", '{"type":"auth","token":"x"}', []),
]


@pytest.mark.parametrize(
    ("frame", "expected"),
    [(frame, expected) for _, frame, expected in PROBES],
    ids=[name for name, _, _ in PROBES],
)
def test_each_hostile_frame_gets_its_documented_answer(
    app: Started, client: ClientConnection, frame: str, expected: list[dict[str, Any]]
) -> None:
    assert answers_to(client, frame) == expected
    assert echo(client, "still served") == "still served"
    assert_nothing_logged_at_error(app)


def test_an_oversized_frame_is_closed_with_1009(app: Started) -> None:
    with connect(app.ws_url("/ws/frames"), max_size=2**21) as client:
        assert next_frame(client)["type"] == "joined"
        client.send(chat_frame("hi", "c" * 2**20))
        with pytest.raises(ConnectionClosed):
            next_frame(client)
        assert client.close_code == 1009
    with connect(app.ws_url("/ws/frames")) as good:
        assert echo(good, "after the big one") == "after the big one"
    assert_nothing_logged_at_error(app)


def test_duplicate_text_keys_deliver_the_last_one(client: ClientConnection) -> None:
    frame = '{"type":"message","text":"first","text":"second","client_id":"d-1"}'
    assert delivered(answers_to(client, frame), "d-1") == "second"


def test_a_lone_surrogate_in_an_ignored_field_is_ignored(client: ClientConnection) -> None:
    frame = '{"type":"message","text":"fine","client_id":"i-1","\\ud800":"\\udc00"}'
    assert delivered(answers_to(client, frame), "i-1") == "fine"


def test_text_of_exactly_max_text_length_astral_characters_is_delivered(
    client: ClientConnection,
) -> None:
    text = "😀" * MAX_TEXT_LENGTH
    assert delivered(answers_to(client, chat_frame(text, "a-1")), "a-1") == text


# --- Fuzzing: random frames, each answered as the protocol says ---------------

SURROGATES = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "a\ud800b"])
STRINGS = st.one_of(st.text(max_size=30), SURROGATES)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False),
    STRINGS,
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(STRINGS, children, max_size=4)
    ),
    max_leaves=12,
)
MESSAGE_OBJECTS = st.fixed_dictionaries(
    {},
    optional={
        "type": st.one_of(st.sampled_from(["message", "auth"]), JSON_VALUES),
        "text": st.one_of(st.text(max_size=MAX_TEXT_LENGTH + 5), JSON_VALUES),
        "client_id": st.one_of(st.from_regex(CLIENT_ID, fullmatch=True), JSON_VALUES),
        "token": JSON_VALUES,
        "from": JSON_VALUES,
        "id": JSON_VALUES,
    },
)
FRAMES = st.one_of(
    # Mostly not JSON at all; a str with a lone surrogate can't be sent.
    st.text(st.characters(exclude_categories=["Cs"]), max_size=60),
    JSON_VALUES.map(json.dumps),  # any JSON, mostly not an object
    MESSAGE_OBJECTS.map(json.dumps),  # objects near the contract
)


def expected_kind(frame: str) -> str:
    """What the protocol answers, from PROTOCOL.md's rules alone:
    "message" (delivered), "nothing" (an ignored auth frame) or "error"."""
    try:
        data = json.loads(frame)
    except (ValueError, RecursionError):
        return "error"
    if not isinstance(data, dict):
        return "error"
    if data.get("type") == "auth":
        return "nothing" if data.get("token") is None or isinstance(data["token"], str) else "error"
    text, client_id = data.get("text"), data.get("client_id")
    valid = (
        data.get("type") == "message"
        and isinstance(text, str)
        and len(text) <= MAX_TEXT_LENGTH
        and not re.search("[\ud800-\udfff]", text)
        and (client_id is None or (isinstance(client_id, str) and CLIENT_ID.fullmatch(client_id)))
    )
    return "message" if valid else "error"


_rooms = itertools.count()


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(frame=FRAMES)
def test_random_frames_get_the_documented_answer_and_the_connection_stays_open(
    app: Started, frame: str
) -> None:
    # A room of its own: a client_id another example used is not a duplicate.
    with connect(app.ws_url(f"/ws/fuzz-{next(_rooms)}")) as client:
        assert next_frame(client)["type"] == "joined"
        answers = answers_to(client, frame)
    kind = expected_kind(frame)
    if kind == "nothing":
        assert answers == []
    elif kind == "message":
        data = json.loads(frame)
        assert delivered(answers, data.get("client_id")) == data["text"]
    else:
        (error,) = answers
        assert error["type"] == "error" and error["error"] in ERRORS, error
        assert isinstance(error["reason"], str) and error["reason"]
        data = json.loads(frame) if error["error"] != "invalid_json" else None
        named = data.get("client_id") if isinstance(data, dict) else None
        assert error["client_id"] in (None, named), (error, named)
    assert_nothing_logged_at_error(app)
