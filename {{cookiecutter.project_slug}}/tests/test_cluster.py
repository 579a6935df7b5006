"""Rooms shared by processes through a real Redis Cluster: three masters and
a replica of each, with sharded pub/sub, through the loss of a master."""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
import redis
from redis.crc import key_slot
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

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


def all_shard_channels(cluster: RedisCluster) -> set[str]:
    return set().union(*(shard_channels(cluster, port) for port in cluster.masters()))


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


def node(cluster: RedisCluster, port: int) -> redis.Redis:
    """A plain client of one node, for its own commands (CONFIG, INFO)."""
    return redis.Redis(port=port, decode_responses=True)


def test_a_master_filling_up_under_noeviction_refuses_only_its_rooms_messages(
    start_clustered: Callable[..., App], redis_cluster: RedisCluster
) -> None:
    """As on one Redis (test_redis.py), on the master that owns the room:
    refused messages get ``unavailable`` and a WARNING, nothing half-stored,
    and the resend is published once when the master has room. The rooms of
    the other masters are served meanwhile."""
    first = start_clustered(MAX_MESSAGES_PER_SECOND="10000")
    second = start_clustered()
    rooms = rooms_by_master(redis_cluster, 1)
    full = redis_cluster.ports[0]
    room = rooms[full][0]
    elsewhere = next(names[0] for port, names in rooms.items() if port != full)
    master = node(redis_cluster, full)
    master.config_set("maxmemory-policy", "noeviction")
    master.config_set("maxmemory", master.info("memory")["used_memory"] + 2**20)
    acked = []
    try:
        with (
            first.client(f"/ws/{room}") as client,
            second.client(f"/ws/{room}") as listener,
            first.client(f"/ws/{elsewhere}") as other,
            second.client(f"/ws/{elsewhere}") as other_listener,
        ):
            for n in range(5000):  # 1 MiB of headroom: about 500 of these
                client_id = client.say("x" * 2000, client_id=f"fill-{n}")
                with contextlib.suppress(TimeoutError):
                    client.ack(client_id, timeout=2)
                if client.errors:
                    break
                acked.append(client_id)
            refused = f"fill-{len(acked)}"
            assert client.error() == {
                "type": "error",
                "error": "unavailable",
                "reason": "the message could not be stored: send it again",
                "client_id": refused,
            }
            other.say("another master has room")
            assert other_listener.hear_text() == "another master has room"
            heard = [listener.hear()["id"] for _ in acked]
            assert heard == [client.acks[c] for c in acked]
            assert 100 < len(acked) < 5000
            assert master.xlen(PACKAGE + ":{" + room + "}:history") == len(acked)

            master.config_set("maxmemory", "0")
            client.say("x" * 2000, client_id=refused)  # sent again
            assert listener.hear()["id"] == client.ack(refused)
            with pytest.raises(TimeoutError):
                listener.hear(timeout=0.5)
    finally:
        master.config_set("maxmemory", "0")
    warning = f"WARNING {PACKAGE}.redis_broker: Redis refused a message: "
    assert warning + "command not allowed when used memory > 'maxmemory'" in first.log
    for app in (first, second):
        assert "ERROR" not in app.log and "Traceback" not in app.log, app.log
        assert b"broker: connected" in app.request("GET", "/healthz")[1]


def percentile(values: list[float], percent: int) -> float:
    return sorted(values)[len(values) * percent // 100]


def test_clients_churning_through_rooms_cost_the_cluster_at_most_two_commands_a_room(
    start_clustered: Callable[..., App], redis_cluster: RedisCluster
) -> None:
    """500 clients join and leave 500 rooms as fast as they can. A cluster
    refuses channels of several slots in one command, so each room costs at
    most one SSUBSCRIBE and one SUNSUBSCRIBE (less when it is joined and
    left within one SUBSCRIPTION_INTERVAL), never more; every master and a
    client in another room are answered promptly all along."""
    app = start_clustered(MAX_MESSAGES_PER_SECOND="10000")
    masters = [node(redis_cluster, port) for port in redis_cluster.masters()]

    def churn(worker: int) -> None:
        for n in range(100):
            with connect(app.ws_url(f"/ws/churn-{worker}-{n}")) as client:
                client.recv(timeout=10)  # joined: the room was subscribed

    with app.client("/ws/steady") as steady:
        for master in masters:
            master.config_resetstat()
        workers = [threading.Thread(target=churn, args=(w,)) for w in range(5)]
        for worker in workers:
            worker.start()
        round_trips, pings = [], []
        while any(worker.is_alive() for worker in workers):
            time.sleep(0.01)
            sent = time.monotonic()
            steady.say("still here")
            assert steady.hear_text() == "still here"
            round_trips.append(time.monotonic() - sent)
            for master in masters:
                sent = time.monotonic()
                master.ping()
                pings.append(time.monotonic() - sent)
        for worker in workers:
            worker.join()
        deadline = time.monotonic() + 5
        while all_shard_channels(redis_cluster) != {channel("steady")}:
            assert time.monotonic() < deadline, all_shard_channels(redis_cluster)
            time.sleep(0.05)
        commands = {
            name: sum(
                master.info("commandstats").get(f"cmdstat_{name}", {}).get("calls", 0)
                for master in masters
            )
            for name in ("ssubscribe", "sunsubscribe")
        }

    print(f"\n500 rooms churned: {commands}")
    assert 0 < commands["ssubscribe"] <= 500, commands
    assert commands["sunsubscribe"] <= commands["ssubscribe"], commands
    assert len(round_trips) > 10 and percentile(round_trips, 95) < 0.5, round_trips
    assert percentile(pings, 95) < 0.5, pings
    assert "ERROR" not in app.log and "Traceback" not in app.log
