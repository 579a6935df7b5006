"""The broker's contract: the same tests against every implementation.

Each test runs against the in-memory broker{% if cookiecutter.use_redis %} and against the Redis one, on a
real redis-server and on a real Redis Cluster{% endif %}, in this process.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import pytest

from {{ cookiecutter.package_name }} import protocol
from {{ cookiecutter.package_name }}.broker import Broker, Replay

Delivered = list[tuple[str, str, str]]
Scenario = Callable[[Broker, Delivered], Awaitable[None]]

{%- if cookiecutter.use_redis %}
KINDS = ["memory", "redis", "cluster"]
{%- else %}
KINDS = ["memory"]
{%- endif %}


@pytest.fixture(params=KINDS)
def run_with_broker(
    request: pytest.FixtureRequest,
) -> Callable[..., None]:
    """Run a scenario against a broker of the parameter's kind."""

    def run(scenario: Scenario, **options: float) -> None:
        if request.param == "memory":
            factory: Callable[[], Broker] = lambda: Broker(**options)  # noqa: E731
{%- if cookiecutter.use_redis %}
        else:
            import uuid

            from {{ cookiecutter.package_name }}.redis_broker import RedisBroker

            if request.param == "redis":
                url = request.getfixturevalue("redis_url")
            else:
                url = request.getfixturevalue("shared_redis_cluster").url
            # A prefix of its own: the cluster outlives the test.
            prefix = f"test-{uuid.uuid4().hex}:"
            factory = lambda: RedisBroker(  # noqa: E731
                url, channel_prefix=prefix, ssl_cert_reqs="required", **options
            )
{%- endif %}
        asyncio.run(in_broker(factory, scenario))

    return run


#: The rooms every scenario's process has members of.
ROOMS = ("r", "s")


async def in_broker(factory: Callable[[], Broker], scenario: Scenario) -> None:
    async with running(factory()) as broker:
        delivered: Delivered = []
        broker.subscribe(lambda *message: delivered.append(message))
        for room in ROOMS:
            await broker.watch(room)
        await scenario(broker, delivered)


@asynccontextmanager
async def running(broker: Broker) -> AsyncIterator[Broker]:
    task = asyncio.create_task(broker.run())
    deadline = time.monotonic() + 10
    while broker.status not in ("local", "connected"):
        assert time.monotonic() < deadline, "the broker did not connect"
        await asyncio.sleep(0.02)
    try:
        yield broker
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await broker.close()


async def settle(delivered: Delivered, count: int) -> None:
    """Wait until ``count`` messages were delivered (Redis is asynchronous)."""
    deadline = time.monotonic() + 5
    while len(delivered) < count:
        assert time.monotonic() < deadline, delivered
        await asyncio.sleep(0.01)


def tail(text: str, room: str = "r") -> str:
    return protocol.message_tail(room, None, text)


def text_of(frame: str) -> str:
    return json.loads(frame)["text"]


def test_a_published_message_is_delivered_with_its_id_and_frame(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        stored = await broker.publish("r", tail("hi"), "c1")
        await settle(delivered, 1)
        assert not stored.duplicate
        ((room, message_id, frame),) = delivered
        assert (room, message_id) == ("r", stored.id)
        assert frame == protocol.message_frame(stored.id, tail("hi"))

    run_with_broker(scenario)


def test_ids_increase_within_a_room(run_with_broker: Callable[..., None]) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        ids = [(await broker.publish("r", tail(str(n)), None)).id for n in range(20)]
        positions = [protocol.sequence(message_id) for message_id in ids]
        assert None not in positions
        assert positions == sorted(positions)  # type: ignore[type-var]
        assert len(set(ids)) == 20

    run_with_broker(scenario)


def test_a_client_id_is_stored_and_delivered_once(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        first = await broker.publish("r", tail("once"), "same")
        again = await broker.publish("r", tail("once"), "same")
        other_room = await broker.publish("s", tail("once"), "same")
        await settle(delivered, 2)
        await asyncio.sleep(0.1)
        assert again.duplicate and again.id == first.id
        assert not other_room.duplicate
        assert [message[1] for message in delivered] == [first.id, other_room.id]
        replay = await broker.replay("r", first.id)
        assert replay.frames == []

    run_with_broker(scenario)


def test_replay_returns_the_messages_after_since_in_order(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        ids = [(await broker.publish("r", tail(f"m{n}"), None)).id for n in range(5)]
        replay = await broker.replay("r", ids[1])
        assert replay.recovered is True
        assert [text_of(frame) for frame in replay.frames] == ["m2", "m3", "m4"]
        assert replay.last_id == ids[-1]

    run_with_broker(scenario)


def test_replay_reads_a_page_at_a_time_when_given_a_limit(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        ids = [(await broker.publish("r", tail(f"m{n}"), None)).id for n in range(7)]
        pages = []
        since = ids[0]
        while True:
            page = await broker.replay("r", since, 3)
            assert page.recovered is True
            assert page.last_id == ids[-1]
            if not page.frames:
                break
            pages.append([text_of(frame) for frame in page.frames])
            since = protocol.message_id(page.frames[-1])
        assert pages == [["m1", "m2", "m3"], ["m4", "m5", "m6"]]

    run_with_broker(scenario)


def test_a_page_from_an_id_the_history_forgot_meanwhile_is_not_recovered(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        ids = [(await broker.publish("r", tail(str(n)), None)).id for n in range(3)]
        first = await broker.replay("r", ids[0], 1)
        assert [text_of(frame) for frame in first.frames] == ["1"]
        for n in range(300):  # Redis trims MAXLEN ~ in blocks of 100
            await broker.publish("r", tail(f"later {n}"), None)
        cursor = protocol.message_id(first.frames[-1])
        assert (await broker.replay("r", cursor, 2)).recovered is False

    run_with_broker(scenario, history_size=3)


def test_replay_without_since_gives_the_last_id_only(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        empty = await broker.replay("r", None)
        assert empty == Replay(None, [], None)
        stored = await broker.publish("r", tail("x"), None)
        replay = await broker.replay("r", None)
        assert replay == Replay(None, [], stored.id)

    run_with_broker(scenario)


@pytest.mark.parametrize("since", ["nonsense", "1-0", "abcdef01:1", "9" * 30])
def test_replay_from_an_id_the_history_never_held_is_not_recovered(
    run_with_broker: Callable[..., None], since: str
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        await broker.publish("r", tail("x"), None)
        replay = await broker.replay("r", since)
        assert replay.recovered is False
        assert replay.frames == []

    run_with_broker(scenario)


def test_replay_past_the_history_size_is_not_recovered(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        # Redis trims MAXLEN ~ in whole blocks of 100 entries: go past them.
        ids = [(await broker.publish("r", tail(str(n)), None)).id for n in range(300)]
        assert (await broker.replay("r", ids[0])).recovered is False
        recent = await broker.replay("r", ids[-3])
        assert recent.recovered is True
        assert [text_of(frame) for frame in recent.frames] == ["298", "299"]

    run_with_broker(scenario, history_size=3)


def test_history_expires_after_the_ttl(run_with_broker: Callable[..., None]) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        stored = await broker.publish("r", tail("brief"), None)
        assert (await broker.replay("r", stored.id)).recovered is True
        await asyncio.sleep(0.5)
        assert (await broker.replay("r", stored.id)).recovered is False

    run_with_broker(scenario, history_ttl=0.2)


def test_no_history_still_gives_ids_and_never_recovers(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        stored = await broker.publish("r", tail("x"), None)
        await settle(delivered, 1)
        assert protocol.sequence(stored.id) is not None
        assert (await broker.replay("r", stored.id)).recovered is False

    run_with_broker(scenario, history_size=0)


def test_a_room_watched_again_is_delivered_again(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        broker.unwatch("r")
        await asyncio.sleep(0.1)
        await broker.watch("r")
        stored = await broker.publish("r", tail("back"), None)
        await settle(delivered, 1)
        assert [message[1] for message in delivered] == [stored.id]

    run_with_broker(scenario)


def test_a_subscription_confirmed_calls_back_with_its_room(
    run_with_broker: Callable[..., None],
) -> None:
    async def scenario(broker: Broker, delivered: Delivered) -> None:
        confirmed: list[list[str]] = []

        async def record(rooms: list[str]) -> None:
            confirmed.append(rooms)

        broker.on_resubscribed(record)
        await broker.watch("t")
        stored = await broker.publish("t", tail("x", "t"), None)
        await settle(delivered, 1)
        assert delivered[0][1] == stored.id
        if broker.status != "local":  # one process: nothing to subscribe to
            assert confirmed == [["t"]]

    run_with_broker(scenario)
