"""Rooms shared by processes through a real Redis Cluster: three masters and
a replica of each, with sharded pub/sub, through the loss of a master."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from redis.crc import key_slot
from websockets.exceptions import ConnectionClosed

from conftest import PACKAGE, App, Client, RedisCluster, wait_connected

#: How soon every room must cross processes again after a master is lost.
FAILOVER_DEADLINE = 10.0


def slot_ranges(cluster: RedisCluster) -> dict[int, list[range]]:
    """The slots each master owns, by port."""
    ranges: dict[int, list[range]] = {}
    for node in cluster.nodes():
        if "master" not in node[2] or "fail" in node[2]:
            continue
        port = int(node[1].split(":")[1].split("@")[0])
        for span in node[8:]:
            first, _, last = span.partition("-")
            slots = range(int(first), int(last or first) + 1)
            ranges.setdefault(port, []).append(slots)
    return ranges


def rooms_by_master(cluster: RedisCluster, per_master: int) -> dict[int, list[str]]:
    """Room names whose slot each master owns, ``per_master`` of each."""
    ranges = slot_ranges(cluster)
    rooms: dict[int, list[str]] = {port: [] for port in ranges}
    for n in itertools.count():
        room = f"room{n}"
        slot = key_slot(room.encode())
        port = next(p for p, spans in ranges.items() if any(slot in s for s in spans))
        if len(rooms[port]) < per_master:
            rooms[port].append(room)
        if all(len(names) == per_master for names in rooms.values()):
            return rooms
    raise AssertionError("unreachable")


def shard_channels(cluster: RedisCluster, port: int) -> set[str]:
    return set(cluster.command(port, f"PUBSUB SHARDCHANNELS {PACKAGE}:room:*").split())


def channel(room: str) -> str:
    return f"{PACKAGE}:room:" + "{" + room + "}"


def replicated(cluster: RedisCluster, master: int) -> None:
    """Wait until the master's replica has everything it wrote."""
    deadline = time.monotonic() + 10
    while True:
        info = cluster.command(master, "INFO replication")
        offset = next(
            line.split(":")[1]
            for line in info.split()
            if line.startswith("master_repl_offset")
        )
        if f"offset={offset}," in info:
            return
        assert time.monotonic() < deadline, info
        time.sleep(0.05)


def crosses_again(sender: Client, receiver: Client, room: str, deadline: float) -> None:
    """Send until a message sent now reaches ``receiver``, by ``deadline``."""
    for attempt in itertools.count():
        text = f"{room} after the failover, try {attempt}"
        sender.say(text)
        try:
            while receiver.hear_text(timeout=0.5) != text:
                pass
            return
        except TimeoutError:
            assert time.monotonic() < deadline, f"{room} did not cross again"


@pytest.fixture
def start_clustered(
    start_app: Callable[..., App], redis_cluster: RedisCluster
) -> Callable[..., App]:
    """Start an app whose REDIS_URL names the cluster's first master."""

    def start(**env: str) -> App:
        app = start_app(REDIS_URL=redis_cluster.url, **env)
        wait_connected(app)
        return app

    return start


class Across(NamedTuple):
    """A room of the master that REDIS_URL names, with a client on each of
    two processes."""

    room: str
    receiving_app: App
    sender: Client
    receiver: Client


@pytest.fixture
def across(
    start_clustered: Callable[..., App], redis_cluster: RedisCluster
) -> Iterator[Across]:
    first, second = start_clustered(), start_clustered()
    room = rooms_by_master(redis_cluster, 1)[redis_cluster.ports[0]][0]
    with (
        first.client(f"/ws/{room}") as sender,
        second.client(f"/ws/{room}") as receiver,
    ):
        yield Across(room, second, sender, receiver)


def test_a_message_crosses_processes_on_every_shard(
    start_clustered: Callable[..., App], redis_cluster: RedisCluster
) -> None:
    first, second = start_clustered(), start_clustered()
    for rooms in rooms_by_master(redis_cluster, 1).values():
        with (
            first.client(f"/ws/{rooms[0]}") as alice,
            second.client(f"/ws/{rooms[0]}") as bob,
        ):
            alice.say(f"through {rooms[0]}")
            assert bob.hear_text() == f"through {rooms[0]}"
    assert "connected to a Redis Cluster" in first.log


def test_each_room_is_subscribed_on_its_own_master_only(
    start_clustered: Callable[..., App], redis_cluster: RedisCluster
) -> None:
    app = start_clustered()
    rooms = rooms_by_master(redis_cluster, 2)
    clients = [app.client(f"/ws/{room}") for names in rooms.values() for room in names]
    for client in clients:
        client.__enter__()
    try:
        for port, names in rooms.items():
            assert shard_channels(redis_cluster, port) == {channel(r) for r in names}
    finally:
        for client in clients:
            client.__exit__(None, None, None)
    deadline = time.monotonic() + 5
    while any(shard_channels(redis_cluster, port) for port in rooms):
        assert time.monotonic() < deadline, "rooms left empty are still subscribed"
        time.sleep(0.05)


def test_every_room_crosses_processes_again_after_the_named_master_fails(
    start_clustered: Callable[..., App], redis_cluster: RedisCluster
) -> None:
    first, second = start_clustered(), start_clustered()
    named = redis_cluster.ports[0]
    by_master = rooms_by_master(redis_cluster, 7)
    rooms = [room for names in by_master.values() for room in names]
    pairs = [
        (
            first.client(f"/ws/{room}").__enter__(),
            second.client(f"/ws/{room}").__enter__(),
        )
        for room in rooms
    ]
    try:
        for room, (alice, bob) in zip(rooms, pairs, strict=True):
            alice.say(f"{room} before")
            assert bob.hear_text() == f"{room} before"
        replicated(redis_cluster, named)
        redis_cluster.kill(named)
        deadline = time.monotonic() + FAILOVER_DEADLINE
        for room, (alice, bob) in zip(rooms, pairs, strict=True):
            crosses_again(alice, bob, room, deadline)
    finally:
        for alice, bob in pairs:
            for client in (alice, bob):
                with contextlib.suppress(ConnectionClosed):
                    client.__exit__(None, None, None)
    assert named not in redis_cluster.masters()
    for app in (first, second):
        assert app.process.poll() is None, app.log
        assert "ERROR" not in app.log, app.log


def test_resume_after_a_failover_replays_from_the_replica(
    across: Across, redis_cluster: RedisCluster
) -> None:
    room, sender, receiver = across.room, across.sender, across.receiver
    named = redis_cluster.ports[0]
    sender.say("before")
    seen = receiver.hear()["id"]
    replicated(redis_cluster, named)
    redis_cluster.kill(named)
    crosses_again(sender, receiver, room, time.monotonic() + FAILOVER_DEADLINE)
    with across.receiving_app.client(f"/ws/{room}?since={seen}") as resumed:
        assert resumed.joined["recovered"] is True
        assert resumed.hear_text().startswith(f"{room} after the failover")


def test_rooms_of_the_other_masters_go_on_while_one_master_is_lost(
    start_app: Callable[..., App], tmp_path: Path
) -> None:
    # Its replica dies with it, so that no failover ends the outage; the
    # other masters go on serving their slots.
    partial = ("--cluster-require-full-coverage", "no")
    cluster = RedisCluster(tmp_path / "cluster", *partial)
    cluster.start()
    try:
        first = start_app(REDIS_URL=cluster.url)
        second = start_app(REDIS_URL=cluster.url)
        for app in (first, second):
            wait_connected(app)
        rooms = rooms_by_master(cluster, 1)
        lost = next(port for port in rooms if port != cluster.ports[0])
        with (
            first.client(f"/ws/{rooms[lost][0]}") as stranded,
            contextlib.ExitStack() as stack,
        ):
            pairs = {
                port: (
                    stack.enter_context(first.client(f"/ws/{names[0]}")),
                    stack.enter_context(second.client(f"/ws/{names[0]}")),
                )
                for port, names in rooms.items()
                if port != lost
            }
            cluster.kill(cluster.replica_of(lost))
            cluster.kill(lost)
            deadline = time.monotonic() + FAILOVER_DEADLINE
            for port, (alice, bob) in pairs.items():
                crosses_again(alice, bob, rooms[port][0], deadline)
            client_id = stranded.say("nowhere to go")
            error = stranded.error(timeout=10)
            assert (error["error"], error["client_id"]) == ("unavailable", client_id)
        for app in (first, second):
            assert b"broker: degraded" in app.request("GET", "/healthz")[1]
            assert app.process.poll() is None, app.log
            assert "ERROR" not in app.log, app.log
    finally:
        cluster.stop()


def test_no_acknowledged_message_is_lost_or_doubled_across_a_failover(
    across: Across, redis_cluster: RedisCluster
) -> None:
    sender, receiver = across.sender, across.receiver
    named = redis_cluster.ports[0]
    acked = [sender.say_until_acked(f"m{n}") for n in range(10)]
    replicated(redis_cluster, named)
    redis_cluster.kill(named)
    acked += [sender.say_until_acked(f"m{n}") for n in range(10, 30)]
    heard = [receiver.hear(timeout=15)["id"] for _ in acked]
    assert heard == acked
    with pytest.raises(TimeoutError):
        receiver.hear(timeout=0.5)
