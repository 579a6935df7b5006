"""The load client: one process, the same for every server, driven over stdin.

run.py starts one per server process, pinned to another CPU than the
server's, sends it one JSON command per line and reads one JSON answer per
line. It speaks WebSocket through picows, the fastest Python client, on
uvloop, so that the server, not the client, is the first to run out of CPU; it
offers per-message deflate as browsers do (see deflate.py). It reads the
server's CPU time itself, at the instants it snapshots its delivery count,
so that both cover the same window.

It speaks the baked app's wire protocol, version 1: it sends
``{"type":"message","text":...,"client_id":...}`` with a client_id of its
own for every message, and counts as deliveries only the ``message`` frames
it receives; ``joined`` and ``ack`` frames are counted apart, ``error``
frames too (a load test fails on any). A message's text starts with a tag
naming its sender (or its latency probe): that is how a client knows its own
message came back, and when the last member of a room has a probe.

Commands (``op`` plus keyword arguments of the Agent method of that name):
``open``, ``loop``, ``paced``, ``latency``, ``close``, ``closes``; ``exit`` ends it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import resource
import sys
import time
from collections.abc import Callable
from typing import Any

import cpu
import deflate
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

#: Characters of every message's text.
MESSAGE_SIZE = 64
TAG_SIZE = 7
#: The start of a text that handlers see: the tag, then (paced) a sequence.
HEAD_SIZE = TAG_SIZE + 8

#: How every server here starts a message frame and an ack (compact JSON,
#: ``type`` first), so that the client needn't parse them: it finds the
#: text's tag in place. Any other frame is parsed.
MESSAGE_HEAD = b'{"type":"message",'
ACK_HEAD = b'{"type":"ack",'
#: In JSON text, these bytes can only be a key: inside a string, '"' is escaped.
TEXT_KEY = b'"text":"'

#: Seconds between two checks of what is due in the open loop.
PACE_TICK = 0.001

__all__ = ["Agent", "Member"]


class Counters:
    """Totals over every connection; one object, so reading them costs nothing."""

    def __init__(self) -> None:
        self.deliveries = 0  # message frames received
        self.returned = 0  # messages that came back to their own sender
        self.acks = 0
        self.joined = 0
        self.errors = 0  # error frames, and frames that are none of the above
        self.last_error = ""


class Member(WSListener):
    """One client connection; reacts to messages through ``on_message``."""

    def __init__(self, index: int, counters: Counters, codec: deflate.Deflate | None) -> None:
        self.tag = b"%07d" % index
        self.text = self.tag.ljust(MESSAGE_SIZE, b".")
        self.counters = counters
        self.codec = codec
        self.transport: WSTransport | None = None
        self.close_code: int | None = None
        #: Called with the first HEAD_SIZE bytes of each message's text.
        self.on_message: Callable[[Member, bytes], None] | None = None
        self.sent = 0

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if frame.rsv1 and self.codec is not None:
                payload = self.codec.decompress(payload)
            start = payload.find(TEXT_KEY) if payload.startswith(MESSAGE_HEAD) else -1
            if start >= 0:
                start += len(TEXT_KEY)
                head = payload[start : start + HEAD_SIZE]
            elif payload.startswith(ACK_HEAD):
                self.counters.acks += 1
                return
            else:
                head = self.parse(payload)
                if head is None:
                    return
            self.counters.deliveries += 1
            if self.on_message is not None:
                self.on_message(self, head)
        elif frame.msg_type == WSMsgType.CLOSE:
            code = frame.get_close_code()
            self.close_code = int(getattr(code, "value", code))
            if not transport.is_close_frame_sent:
                transport.send_close(code)
            transport.disconnect()

    def parse(self, payload: bytes) -> bytes | None:
        """Count a frame that is not a compact message or ack frame.

        Return the head of its text if it is a message after all.
        """
        try:
            data = json.loads(payload)
        except ValueError:
            data = None
        kind = data.get("type") if isinstance(data, dict) else None
        if kind == "message" and isinstance(data.get("text"), str):
            return data["text"].encode()[:HEAD_SIZE]
        if kind == "ack":
            self.counters.acks += 1
        elif kind == "joined":
            self.counters.joined += 1
        else:
            self.counters.errors += 1
            self.counters.last_error = payload[:200].decode(errors="replace")
        return None

    def send_message(self, text: bytes | None = None) -> None:
        """Send ``text`` (ASCII, nothing to escape; by default the member's own)
        in a message frame with a client_id never used before."""
        self.sent += 1
        self.send(
            b'{"type":"message","text":"%s","client_id":"%s-%d"}'
            % (self.text if text is None else text, self.tag, self.sent)
        )

    def send(self, payload: bytes) -> None:
        assert self.transport is not None
        if self.codec is None:
            self.transport.send(WSMsgType.TEXT, payload)
        else:
            self.transport.send(WSMsgType.TEXT, self.codec.compress(payload), rsv1=True)


class Agent:
    """Named groups of connections and the workloads run on them."""

    def __init__(self) -> None:
        self.groups: dict[str, list[Member]] = {}
        self.counters = Counters()
        self.next_index = 0

    async def open(
        self, group: str, url: str, path: str, count: int, rooms: int = 1, concurrency: int = 50
    ) -> dict[str, Any]:
        """Open ``count`` connections to ``url + path.format(i=i % rooms)``."""
        members = self.groups.setdefault(group, [])
        gate = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def connect(i: int) -> None:
            index, self.next_index = self.next_index, self.next_index + 1

            def factory(request: Any, response: Any) -> Member:
                codec = deflate.negotiate(response.headers.get("Sec-WebSocket-Extensions"))
                return Member(index, self.counters, codec)

            async with gate:
                try:
                    _, member = await ws_connect(
                        factory,
                        url + path.format(i=i % rooms),
                        extra_headers={"Sec-WebSocket-Extensions": deflate.OFFER},
                        websocket_handshake_timeout=30,
                    )
                except Exception as exc:  # reported, not raised: run.py decides
                    errors.append(repr(exc))
                else:
                    members.append(member)

        start = time.perf_counter()
        await asyncio.gather(*(connect(i) for i in range(count)))
        return {
            "opened": count - len(errors),
            "failed": len(errors),
            "errors": errors[:3],
            "seconds": time.perf_counter() - start,
            "deflate": sum(m.codec is not None for m in members),
        }

    async def loop(
        self, group: str, seconds: float, warmup: float, server_pid: int, in_flight: int = 1
    ) -> dict[str, Any]:
        """Closed loop: each member keeps ``in_flight`` of its messages on their way.

        It sends one more each time one of its own comes back. In a shared
        room every member receives every message; alone in a room, a member
        receives only its own (an echo). Counts and CPU times are read at the
        start and the end of the window, after a warm-up.
        """
        members = self.groups[group]
        running = True
        on_their_way = dict.fromkeys(members, in_flight)  # by sender
        drained = asyncio.get_running_loop().create_future()

        def on_message(member: Member, head: bytes) -> None:
            if head[:TAG_SIZE] != member.tag:
                return
            self.counters.returned += 1
            if running:
                member.send_message()
                return
            on_their_way[member] -= 1
            if not on_their_way[member]:
                del on_their_way[member]
                if not on_their_way and not drained.done():
                    drained.set_result(None)

        for member in members:
            member.on_message = on_message
            for _ in range(in_flight):
                member.send_message()
        await asyncio.sleep(warmup)
        before = self.snapshot(server_pid)
        await asyncio.sleep(seconds)
        after = self.snapshot(server_pid)
        running = False
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained, timeout=10)
        for member in members:
            member.on_message = None
        return {
            "elapsed": after["time"] - before["time"],
            "deliveries": after["deliveries"] - before["deliveries"],
            "returned": after["returned"] - before["returned"],
            "server_cpu": after["server_cpu"] - before["server_cpu"],
            "client_cpu": after["client_cpu"] - before["client_cpu"],
            "machine_cpu": after["machine_cpu"] - before["machine_cpu"],
            "acks": after["acks"] - before["acks"],
            "lost": sum(on_their_way.values()),
            "closed": sum(m.close_code is not None for m in members),
            "error_frames": self.counters.errors,
            "last_error": self.counters.last_error,
        }

    async def paced(
        self, group: str, rate: float, seconds: float, warmup: float, server_pid: int
    ) -> dict[str, Any]:
        """Open loop: the members send ``rate`` messages a second in all, in turn,
        whatever the server's speed, as users do; below saturation, each
        message pays its own wake-ups and system calls.

        Every message's text carries a sequence number; each delivery's
        latency, from the send to a member's receipt, is kept over the window.
        """
        members = self.groups[group]
        sent_at: dict[bytes, float] = {}
        latencies: list[float] = []
        measuring = False

        def on_message(member: Member, head: bytes) -> None:
            sent = sent_at.get(head[TAG_SIZE:])
            if sent is not None and measuring:
                latencies.append(time.perf_counter() - sent)

        for member in members:
            member.on_message = on_message
        start = time.perf_counter()
        stop = start + warmup + seconds
        sent = 0
        before: dict[str, float] = {}
        while (now := time.perf_counter()) < stop:
            if not measuring and now >= start + warmup:
                measuring, before = True, self.snapshot(server_pid)
            due = int((now - start) * rate) - sent
            for _ in range(due):
                member = members[sent % len(members)]
                sequence = b"%08d" % (sent % 10**8)
                sent_at[sequence] = time.perf_counter()
                member.send_message((member.tag + sequence).ljust(MESSAGE_SIZE, b"."))
                sent += 1
            await asyncio.sleep(PACE_TICK)
        after = self.snapshot(server_pid)
        measuring = False
        await asyncio.sleep(0.5)  # let the last ones arrive before the next round
        for member in members:
            member.on_message = None
        latencies.sort()
        return {
            "elapsed": after["time"] - before["time"],
            "deliveries": after["deliveries"] - before["deliveries"],
            "server_cpu": after["server_cpu"] - before["server_cpu"],
            "client_cpu": after["client_cpu"] - before["client_cpu"],
            "machine_cpu": after["machine_cpu"] - before["machine_cpu"],
            "sent": sent,
            "latency_p50": latencies[len(latencies) // 2] if latencies else None,
            "latency_p99": latencies[int(len(latencies) * 0.99)] if latencies else None,
            "closed": sum(m.close_code is not None for m in members),
            "error_frames": self.counters.errors,
            "last_error": self.counters.last_error,
        }

    def snapshot(self, server_pid: int) -> dict[str, float]:
        return {
            "time": time.perf_counter(),
            "deliveries": self.counters.deliveries,
            "returned": self.counters.returned,
            "acks": self.counters.acks,
            "server_cpu": cpu.process_seconds(server_pid),
            "client_cpu": cpu.own_seconds(),
            "machine_cpu": cpu.machine_seconds(),
        }

    async def latency(self, group: str, samples: int, timeout: float = 10) -> dict[str, Any]:
        """Time from sending one message until the last member has received it."""
        members = self.groups[group]
        latencies: list[float] = []
        try:
            for sample in range(samples):
                probe = (b"L%06d" % sample).ljust(MESSAGE_SIZE, b".")
                latencies.append(await self.probe(members, probe, timeout))
                await asyncio.sleep(0.02)
        except TimeoutError as exc:
            return {"latencies": latencies, "error": str(exc)}
        finally:
            for member in members:
                member.on_message = None
        return {"latencies": latencies}

    async def probe(self, members: list[Member], probe: bytes, timeout: float) -> float:
        """Send ``probe`` from the first member; wait until every member has it."""
        arrived = 0
        last = 0.0
        everyone = asyncio.get_running_loop().create_future()

        def on_message(member: Member, head: bytes) -> None:
            nonlocal arrived, last
            if head[:TAG_SIZE] == probe[:TAG_SIZE]:
                arrived += 1
                last = time.perf_counter()
                if arrived == len(members):
                    everyone.set_result(None)

        for member in members:
            member.on_message = on_message
        sent = time.perf_counter()
        members[0].send_message(probe)
        try:
            await asyncio.wait_for(everyone, timeout)
        except TimeoutError:
            error = self.counters.last_error
            raise TimeoutError(
                f"{arrived} of {len(members)} received {probe[:TAG_SIZE]!r}"
                + (f"; last error frame: {error}" if error else "")
            ) from None
        return last - sent

    async def close(self, group: str, timeout: float = 10) -> dict[str, Any]:
        """Close every connection of ``group`` from the client side, with 1000."""
        members = self.groups.pop(group, [])
        for member in members:
            if member.transport is not None and not member.transport.is_close_frame_sent:
                member.transport.send_close(WSCloseCode.OK)
        return await self.wait_disconnected(members, timeout)

    async def closes(self, group: str, timeout: float) -> dict[str, Any]:
        """Wait until the server has closed every connection of ``group``."""
        return await self.wait_disconnected(self.groups.pop(group, []), timeout)

    async def wait_disconnected(self, members: list[Member], timeout: float) -> dict[str, Any]:
        transports = [m.transport for m in members if m.transport is not None]
        start = time.perf_counter()
        waits = [asyncio.ensure_future(t.wait_disconnected()) for t in transports]
        if waits:
            await asyncio.wait(waits, timeout=timeout)
        for wait in waits:
            wait.cancel()
        codes = collections.Counter(
            "none" if m.close_code is None else str(m.close_code) for m in members
        )
        still_open = sum(not t.is_disconnected for t in transports)
        for transport in transports:
            transport.disconnect(graceful=False)
        return {
            "codes": dict(codes),
            "still_open": still_open,
            "seconds": time.perf_counter() - start,
        }


async def serve_commands() -> None:
    """Answer one JSON line on stdout for each JSON line on stdin."""
    agent = Agent()
    ops = {
        "open": agent.open,
        "loop": agent.loop,
        "paced": agent.paced,
        "latency": agent.latency,
        "close": agent.close,
        "closes": agent.closes,
    }
    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        op = command.pop("op")
        if op == "exit":
            break
        try:
            answer = await ops[op](**command)
        except Exception as exc:  # the driver shows it and gives up
            answer = {"error": f"{op}: {exc!r}"}
        print(json.dumps(answer), flush=True)
    for members in agent.groups.values():
        for member in members:
            if member.transport is not None:
                member.transport.disconnect(graceful=False)


def main() -> None:
    # One file descriptor per connection: take all the kernel allows us.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve_commands())
    else:
        uvloop.run(serve_commands())


if __name__ == "__main__":
    main()
