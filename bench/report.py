"""Turn rounds of measurements into one table, ratios to (b), and RESULTS.md.

Every number in the table is the median over rounds; every ratio divides
(a)'s or a peer's median by (b)'s from the same run, since absolute numbers
drift between runs on a shared machine and ratios much less.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import statistics
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from targets import BASELINE, NO_HISTORY, TEMPLATE, Target

__all__ = ["history_section", "machine", "render", "summarize", "versions"]

#: Libraries whose versions decide the numbers.
LIBRARIES = (
    "websockets",
    "aiohttp",
    "uvloop",
    "uvicorn",
    "starlette",
    "anyio",
    "h11",
    "picows",
    "aiofastnet",
    "cookiecutter",
    "prometheus-client",
    "redis",
)

#: Client CPU share above which a throughput is the client's, not the server's.
CLIENT_BOUND = 0.9

#: The most server CPU per fan-out delivery (a) may spend with its default
#: history, as a multiple of the same without history (HISTORY_SIZE=0).
HISTORY_TARGET = 1.10

#: The heading of RESULTS.md's last section, which a run keeps as it was.
HISTORY_HEADING = "## History"


def summarize(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians over rounds of one target's records (see scenarios.measure)."""

    def median(pick: Callable[[dict[str, Any]], float]) -> float:
        return statistics.median(pick(r) for r in rounds)

    loaded = {
        "fanout_cpu_us": median(lambda r: r["fanout"]["cpu_us"]),
        "fanout_per_s": median(lambda r: r["fanout"]["deliveries_per_s"]),
        "fanout_client_busy": median(lambda r: r["fanout"]["client_busy"]),
        "fanout_server_busy": median(lambda r: r["fanout"]["server_busy"]),
        "echo_cpu_us": median(lambda r: r["echo"]["cpu_us"]),
        "echo_per_s": median(lambda r: r["echo"]["round_trips_per_s"]),
        "echo_client_busy": median(lambda r: r["echo"]["client_busy"]),
        "echo_server_busy": median(lambda r: r["echo"]["server_busy"]),
        "others_busy": max(r[w]["others_busy"] for r in rounds for w in ("fanout", "echo")),
        "boot_ms": statistics.median(b * 1000 for r in rounds for b in r["boot"]),
        "deflate": all(r[w]["deflate"] for r in rounds for w in ("fanout", "echo")),
        "acks_per_message": min(
            r[w]["acks_per_message"] for r in rounds for w in ("fanout", "echo")
        ),
        "latency_ms": median(lambda r: r["latency"] * 1000),
        "redis_latency_ms": (
            median(lambda r: r["redis_latency"] * 1000) if "redis_latency" in rounds[0] else None
        ),
        **paced_summary(rounds),
        "rounds": len(rounds),
        "busy_before": max(r["machine_busy_before"] for r in rounds),
        "remeasured": sum(r["attempts"] - 1 for r in rounds),
    }
    if "kib_per_idle" not in rounds[0]:  # measured under load only
        idle: dict[str, Any] = dict.fromkeys(
            ("kib_per_idle", "sigterm_s", "sigterm_max_s", "sigterm_cpu_s"), None
        )
        idle |= {"sigterm_connections": None, "close_codes": [], "all_saw_1001": None}
        return {**loaded, **idle, "exit_statuses": []}
    counts = list(rounds[0]["kib_per_idle"])
    return {
        **loaded,
        "kib_per_idle": {c: median(lambda r, c=c: r["kib_per_idle"][c]) for c in counts},
        "sigterm_s": median(lambda r: r["sigterm"]["seconds"]),
        "sigterm_max_s": max(r["sigterm"]["seconds"] for r in rounds),
        "sigterm_cpu_s": median(lambda r: r["sigterm"]["cpu"]),
        "sigterm_connections": rounds[0]["sigterm"]["connections"],
        # Each round's codes, in order: a table cell shows them, the test checks them.
        "close_codes": [r["sigterm"]["codes"] for r in rounds],
        "all_saw_1001": all(
            r["sigterm"]["codes"] == {"1001": r["sigterm"]["connections"]} for r in rounds
        ),
        "exit_statuses": sorted({r["sigterm"]["status"] for r in rounds}, key=str),
    }


def receive_path_goals(rows: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """Issue 16's targets for (a), from the same run."""
    a, b = rows["a"], rows[BASELINE]
    found: list[tuple[str, bool, str]] = []
    peer = rows.get("c-uvloop")
    if peer is not None:
        found.append(
            (
                "echo round trips/s at least aiohttp on uvloop's",
                a["echo_per_s"] >= peer["echo_per_s"],
                f"{a['echo_per_s'] / peer['echo_per_s']:.2f}x; from server CPU per round"
                f" trip {peer['echo_cpu_us'] / a['echo_cpu_us']:.2f}x",
            )
        )
    if a.get("paced") and b.get("paced"):
        share = a["paced"]["cpu_us"] / b["paced"]["cpu_us"]
        found.append(
            (
                "fan-out server CPU per delivery at the fixed load ≤ 0.5x (b)",
                share <= 0.5,
                f"{share:.2f}x; saturated {a['fanout_cpu_us'] / b['fanout_cpu_us']:.2f}x",
            )
        )
    idle = a.get("kib_per_idle") or {}
    if idle:
        worst = max(idle.values())
        found.append(("≤ 16 KiB RSS per idle connection", worst <= 16, f"{worst:.1f} KiB at most"))
    return found


def paced_summary(rounds: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the fixed-load rounds, if they ran."""
    if "paced" not in rounds[0]:
        return {"paced": None}
    picked = [r["paced"] for r in rounds]
    return {
        "paced": {
            key: statistics.median(p[key] for p in picked)
            for key in ("rate", "cpu_us", "deliveries_per_s", "server_busy", "p50_ms", "p99_ms")
        }
        | {"others_busy": max(p["others_busy"] for p in picked)}
    }


def paced_lines(
    rows: dict[str, dict[str, Any]], labels: dict[str, str], settings: dict[str, Any]
) -> list[str]:
    """The fixed-load table: where production servers run, below saturation."""
    if not all(row.get("paced") for row in rows.values()):
        return []
    base = rows[BASELINE]["paced"]
    share = settings["paced_share"]
    lines = [
        f"## At a fixed load: {share:.0%} of (b)'s saturated fan-out",
        "",
        f"The fan-out room ({settings['fanout_clients']} clients) sent"
        f" {base['rate']:,.0f} messages a second in all, in turn, whatever the server's"
        f" speed (an open loop): {share:.0%} of the deliveries per second (b) managed"
        " saturated, above. Below saturation each message pays its own wake-ups and"
        " system calls, which a saturated server amortizes. Latency is from a message's"
        " send to each member's receipt, over every delivery of the window. Ratios are"
        " to (b).",
        "",
        "| server | server CPU µs / delivery | deliveries / s | server busy |"
        " delivery latency p50, ms | p99, ms | others busy |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in rows.items():
        paced = row["paced"]
        lines.append(
            f"| {labels[key]} | {cell(paced['cpu_us'], base['cpu_us'], 2)}"
            f" | {paced['deliveries_per_s']:,.0f} | {paced['server_busy']:.0%}"
            f" | {cell(paced['p50_ms'], base['p50_ms'], 2)}"
            f" | {cell(paced['p99_ms'], base['p99_ms'], 2)} | {paced['others_busy']:.0%} |"
        )
    return [*lines, ""]


def unique(items: list[Any]) -> list[Any]:
    """``items`` without repeats, in order: rounds that agree are shown once."""
    kept: list[Any] = []
    for item in items:
        if item not in kept:
            kept.append(item)
    return kept


def ratio(value: float, base: float) -> str:
    return f"{value / base:.2f}x" if base else "n/a"


def cell(value: float, base: float, digits: int = 1, mark: str = "") -> str:
    return f"{value:,.{digits}f}{mark} ({ratio(value, base)})"


def table(
    rows: dict[str, dict[str, Any]], labels: dict[str, str], settings: dict[str, Any]
) -> list[str]:
    """The one results table, a row per server, ratios to the baseline's row."""
    base = rows[BASELINE]
    counts = list(base["kib_per_idle"])
    latency_clients = f"{settings['latency_clients']:,}"
    header = [
        "server",
        "fan-out: server CPU µs / delivery",
        "fan-out: deliveries / s",
        "echo: server CPU µs / round trip",
        "echo: round trips / s",
        *(f"KiB RSS / idle conn. @ {int(c):,}" for c in counts),
        "boot → first 200, ms",
        f"SIGTERM → exit @ {base['sigterm_connections']:,} conn., s",
        "close codes each client saw (exit status; server CPU from SIGTERM to exit)",
        f"1 message → {latency_clients} clients, ms",
    ]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in rows.items():

        def busy(share: float) -> str:
            return "*" if share >= CLIENT_BOUND else ""

        if row["kib_per_idle"] is None:  # measured under load only
            idle = ["not measured"] * (len(counts) + 2)
        else:
            codes = " / ".join(
                ", ".join(f"{code} x{n:,}" for code, n in sorted(each.items()))
                for each in unique(row["close_codes"])
            )
            statuses = ", ".join(str(s) for s in row["exit_statuses"])
            idle = [
                *(cell(row["kib_per_idle"][c], base["kib_per_idle"][c]) for c in counts),
                cell(row["sigterm_s"], base["sigterm_s"], 2),
                f"{codes} (exit {statuses}; {row['sigterm_cpu_s']:.2f} s CPU)",
            ]
        cells = [
            labels[key],
            cell(row["fanout_cpu_us"], base["fanout_cpu_us"], 2),
            cell(row["fanout_per_s"], base["fanout_per_s"], 0, busy(row["fanout_client_busy"])),
            cell(row["echo_cpu_us"], base["echo_cpu_us"], 2),
            cell(row["echo_per_s"], base["echo_per_s"], 0, busy(row["echo_client_busy"])),
            *idle[: len(counts)],
            cell(row["boot_ms"], base["boot_ms"], 0),
            *idle[len(counts) :],
            cell(row["latency_ms"], base["latency_ms"], 1),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


#: Why a target is missed when it is, from profiling (see the commit history of
#: the generated app's fanout.py, server.py and config.py), by the goal's start.
WHY_MISSED = {
    "echo": (
        "both servers run a core flat out, so round trips/s is 1 / CPU per round trip;"
        " about 6.5 µs of each is the kernel (recv, writev, epoll on loopback) and"
        " several µs websockets' frame parser in Python, which uvloop does not touch"
        " (the app's fast path already skips the assembler and the task wake-up)."
        " Without deflate, (b) costs nearly what (a) does, so most of (a)'s lead is"
        " (b) paying for compression. 2x would take a frame parser of our own, which"
        " would give up the library's guarantees"
    ),
    "SIGTERM": (
        "websockets closes each connection with a closing handshake in a task of its"
        " own; the server needs about 1.1 s of CPU for 10,000, so the wall time"
        " passes 2 s when other jobs share the core. Closing connections directly"
        " would save about 12% but bypass the library's close timeout and its"
        " handling of a fragmented send"
    ),
}


#: Why an issue-16 target was missed, from the profiles below.
RECEIVE_WHY = {
    "fan-out server CPU per delivery at the fixed load": (
        "below saturation the cost is the kernel's: at the fixed load, 52% of (a)'s"
        " CPU is system time (/proc/<pid>/stat), and py-spy finds 43% of its samples"
        " in the event loop itself (epoll, recv) and 37% in the transport writes,"
        " one send() per member per message, against 7% in the app's receive path."
        " Every server pays those system calls, so the ratio can only fall with"
        " fewer of them: holding writes back to coalesce several messages per"
        " send() would trade latency for CPU, which a chat should not do by"
        " default"
    ),
}

#: py-spy profiles of (a), taken by hand (``py-spy record -r 1000 -f raw``
#: on the server pinned to CPU 0, a picows load client on CPU 1).
PROFILE = [
    "## Where (a)'s time goes (py-spy, 2 December 2026)",
    "",
    "Self time, share of the samples, on the server pinned to CPU 0 with a picows"
    " load client on CPU 1; taken by hand, not by run.py:",
    "",
    "- echo, saturated (32 clients alone in their rooms): event loop (epoll, recv:"
    " uvloop's C code) 19%; `FanoutConnection.write_queued` (the send() calls) 16%;"
    " `fanout.broadcast` 8%; JSON encoding 6% (before frames were put together from"
    " JSON strings: since then, gone from the top); `MemoryHistory.store` 5%;"
    " websockets' `Frame.parse` 5%; `Connection.process_event` (the fast path) 4%;"
    " `Frame.serialize` 4%; `protocol.parse` 3%; `Hub.receive_now` 3%. The receive"
    " path from `data_received` to the ack queued is 55% inclusive, of which"
    " `Hub.receive_now` 37%.",
    "- fan-out at the fixed load (8 clients, 1,400 messages/s): event loop 43%;"
    " `write_queued` 37%; `_write_pending` 3%; `Frame.parse` 3%;"
    " `Connection.data_received` 2%; `MemoryHistory.store` 2%; everything the app"
    " does on receipt (`Hub.receive_now`, inclusive) 7%. System time is 52% of the"
    " server's CPU there.",
    "",
]


def redis_line(rows: dict[str, dict[str, Any]], clients: int) -> list[str]:
    """(a)'s 1,000-client latency through Redis, next to the same in one process."""
    a = rows.get("a")
    if a is None or a.get("redis_latency_ms") is None:
        return []
    return [
        f"1 message → {clients:,} clients split over two processes of (a) sharing the room through"
        f" Redis: {a['redis_latency_ms']:.1f} ms (in one process: {a['latency_ms']:.1f} ms).",
        "",
    ]


def goals(rows: dict[str, dict[str, Any]]) -> list[tuple[str, bool, str]]:
    """Issue 8's targets for (a), each with met or not and the numbers behind it."""
    a, b = rows["a"], rows[BASELINE]
    peers = {k: r for k, r in rows.items() if k not in ("a", NO_HISTORY)}
    fanout_ratio = a["fanout_cpu_us"] / b["fanout_cpu_us"]
    lowest_peer = min(r["fanout_cpu_us"] for r in peers.values())
    worst_kib = max(a["kib_per_idle"].values())
    boot_ratio = a["boot_ms"] / b["boot_ms"]
    connections = a["sigterm_connections"]
    return [
        (
            "fan-out server CPU per delivery ≤ 0.5x (b) and lower than every peer",
            fanout_ratio <= 0.5 and a["fanout_cpu_us"] < lowest_peer,
            f"{fanout_ratio:.2f}x (b); (a) {a['fanout_cpu_us']:.2f} µs, "
            f"lowest peer {lowest_peer:.2f} µs",
        ),
        (
            "echo ≥ 2x (b)'s round trips/s",
            a["echo_per_s"] >= 2 * b["echo_per_s"],
            f"{a['echo_per_s'] / b['echo_per_s']:.2f}x measured;"
            f" {b['echo_cpu_us'] / a['echo_cpu_us']:.2f}x from server CPU per round trip,"
            " which other jobs on the machine disturb less",
        ),
        (
            "≤ 16 KiB RSS per idle connection",
            worst_kib <= 16,
            ", ".join(f"{v:.1f} KiB @ {int(c):,}" for c, v in a["kib_per_idle"].items()),
        ),
        ("boot to healthy within 1.2x of (b)", boot_ratio <= 1.2, f"{boot_ratio:.2f}x"),
        (
            f"SIGTERM with {connections:,} connections: every client sees 1001, exit within 2 s",
            a["all_saw_1001"] and a["sigterm_max_s"] <= 2,
            f"codes {unique(a['close_codes'])}; exit after {a['sigterm_s']:.2f} s (median),"
            f" {a['sigterm_max_s']:.2f} s (slowest round); "
            f"exit status {a['exit_statuses']}",
        ),
    ]


def history_cost(rows: dict[str, dict[str, Any]]) -> tuple[bool, float] | None:
    """Whether (a)'s default history keeps within HISTORY_TARGET, and the ratio."""
    a, off = rows.get("a"), rows.get(NO_HISTORY)
    if a is None or off is None:
        return None
    fanout = a["fanout_cpu_us"] / off["fanout_cpu_us"]
    return fanout <= HISTORY_TARGET, fanout


def history_cost_lines(rows: dict[str, dict[str, Any]], settings: dict[str, Any]) -> list[str]:
    """(a) at its defaults against (a) with HISTORY_SIZE=0, from the same rounds."""
    cost = history_cost(rows)
    if cost is None:
        return []
    met, fanout = cost
    a, off = rows["a"], rows[NO_HISTORY]
    clients = f"{settings['latency_clients']:,}"

    def line(what: str, key: str, unit: str, digits: int) -> str:
        return (
            f"- {what}: {a[key]:.{digits}f} {unit} with history,"
            f" {off[key]:.{digits}f} {unit} without: {ratio(a[key], off[key])}"
        )

    lines = [
        "## What history costs: (a) at its defaults against (a) with HISTORY_SIZE=0",
        "",
        "Both measured in the same rounds, one after the other. At its defaults (a) keeps"
        " the last 1,000 messages of each room (in this process's memory; in a Redis"
        " Stream when rooms are shared through Redis) for 300 s; with HISTORY_SIZE=0 it"
        " keeps none, but still gives every message an id and acknowledges it. Ratios"
        " are with history ÷ without.",
        "",
        line("fan-out: server CPU per delivery", "fanout_cpu_us", "µs", 2),
        line(
            "echo (a room of one, nothing amortized): server CPU per round trip",
            "echo_cpu_us",
            "µs",
            2,
        ),
        line(f"1 message → {clients} clients", "latency_ms", "ms", 1),
    ]
    if a.get("redis_latency_ms") and off.get("redis_latency_ms"):
        lines.append(
            line(
                f"1 message → {clients} clients over two processes through Redis",
                "redis_latency_ms",
                "ms",
                1,
            )
        )
    lines += [
        f"- {'met' if met else '**missed**'}: history costs at most"
        f" {HISTORY_TARGET:.2f}x the server CPU per fan-out delivery ({fanout:.2f}x)",
        "",
    ]
    return lines


def redis_memory_lines(memory: dict[str, Any] | None) -> list[str]:
    """What ``bench/redis_memory.py`` found, when run.py ran it."""
    if memory is None:
        return []
    m = memory
    return [
        "## Redis memory of busy rooms",
        "",
        f"{m['rooms']:,} rooms, each sent {m['messages']:,} messages of {m['text_length']}"
        f" characters with a client_id, through the baked app's `RedisBroker.publish()`"
        f" at its defaults (HISTORY_SIZE {m['history_size']:,}, HISTORY_TTL"
        f" {m['history_ttl']:g} s), into a redis-server {m['redis_version']} of their own"
        " (`bench/redis_memory.py`): `used_memory` grew by"
        f" **{m['mib']:.1f} MiB, {m['kib_per_room']:.1f} KiB per room**. Of that, the"
        f" Streams hold {m['stream_kib_per_room']:.1f} KiB per room (`MEMORY USAGE`;"
        f" {m['entries_per_room']:,.0f} entries kept on average, `MAXLEN ~` trims whole"
        f" nodes); the rest, {m['other_mib']:.1f} MiB, is the key each message leaves to"
        " remember its client_id for HISTORY_TTL, and the keyspace's tables"
        f" ({m['keys']:,} keys in all, the Streams included): that part grows with the"
        " messages sent within HISTORY_TTL, not with HISTORY_SIZE.",
        "",
    ]


def history_section(previous: str | None) -> list[str]:
    """RESULTS.md's History section, kept from the file a run replaces."""
    if previous is None or f"\n{HISTORY_HEADING}\n" not in previous:
        return []
    kept = previous.split(f"\n{HISTORY_HEADING}\n", 1)[1].strip("\n")
    return [HISTORY_HEADING, "", kept, ""]


def machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = next(
        (line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if "model name" in line),
        platform.processor() or "unknown",
    )
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def versions() -> dict[str, str]:
    found = {}
    for name in LIBRARIES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def template_revision() -> str:
    """The commit the template was baked from, and whether it had local edits."""
    try:
        head = subprocess.run(
            ["git", "-C", str(TEMPLATE), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "-C",
                str(TEMPLATE),
                "status",
                "--porcelain",
                "--",
                "{{cookiecutter.project_slug}}",
                "cookiecutter.json",
                "hooks",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{head} (with uncommitted changes)" if dirty else head


def render(
    rows: dict[str, dict[str, Any]],
    chosen: Sequence[Target],
    settings: dict[str, Any],
    command: str,
    pinned: bool,
    redis_memory: dict[str, Any] | None = None,
    previous: str | None = None,
) -> str:
    """The whole of RESULTS.md; its History section is kept from ``previous``."""
    labels = {t.key: t.label for t in chosen}
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    box = machine()
    lines = [
        "# Benchmark: the baked app side by side with its peers",
        "",
        f"Written by `{command}` on {now}; template at commit {template_revision()}.",
        "Benchmarks, not tests: nothing here is asserted, and only ratios from the same",
        "run compare (absolute numbers drift on a shared machine).",
        "",
        "## Results",
        "",
        f"Medians of {settings['runs']} round{'' if settings['runs'] == 1 else 's'}; ratios are"
        " to (b), the websockets deployment",
        "guide's example grown into rooms with `broadcast()`. `*` marks a throughput the",
        f"load client limited (it was ≥ {CLIENT_BOUND:.0%} busy): the server had spare CPU.",
        "",
        *table(rows, labels, settings),
        "",
        *redis_line(rows, settings["latency_clients"]),
        *paced_lines(rows, labels, settings),
        *history_cost_lines(rows, settings),
        *redis_memory_lines(redis_memory),
        "## Issue 8's targets for (a), against (b)",
        "",
    ]
    if "a" in rows:
        for goal, met, numbers in goals(rows):
            lines.append(f"- {'met' if met else '**missed**'}: {goal} ({numbers})")
            why = next((text for key, text in WHY_MISSED.items() if goal.startswith(key)), None)
            if not met and why:
                lines.append(f"  - why: {why}.")
    if "a" in rows:
        lines += ["", "## Issue 16's targets for (a)", ""]
        for goal, met, numbers in receive_path_goals(rows):
            lines.append(f"- {'met' if met else '**missed**'}: {goal} ({numbers})")
            why = next((text for key, text in RECEIVE_WHY.items() if goal.startswith(key)), None)
            if not met and why:
                lines.append(f"  - why: {why}.")
        lines += ["", *PROFILE]
    lines += [
        "",
        "## Servers",
        "",
        *(f"- {t.label}: `{' '.join(shorten(t.argv))}`; {t.notes}." for t in chosen),
        "",
        "## Workloads",
        "",
        "- protocol: every server speaks the baked app's wire protocol, version 1. A client"
        ' sends `{"type":"message","text":...,"client_id":...}` (a new client_id each time);'
        ' the server sends `{"type":"message","id":...,"room":...,"from":null,"text":...}`'
        " to every member of the room, sender included, then an `ack` to the sender, and a"
        " `joined` frame to each connection as it arrives. Only `message` frames count as"
        " deliveries: acks cost the servers one more small frame per message sent, and are"
        " in their CPU time. The peers keep no history; their ids count up per room.",
        f"- fan-out: {settings['fanout_clients']} clients in one room, each sending a"
        " 64-character text as soon as its previous one came back to it (a closed"
        " loop); every message goes to every member. Deliveries = message frames received,"
        " counted by the clients.",
        f"- echo: {settings['echo_clients']} clients, each alone in its own room, doing"
        " round trips of 64-character texts in a closed loop.",
        f"- Both run {settings['warmup']} s of warm-up, then a {settings['seconds']} s window."
        " Server CPU = utime + stime from /proc/<pid>/stat over the window, divided by the"
        " deliveries in the window.",
        "- memory: a fresh server process, VmRSS after boot, then after opening idle"
        f" connections (in 100 rooms) up to {', '.join(f'{c:,}' for c in settings['idle_counts'])};"
        " (RSS - RSS after boot) ÷ connections.",
        "- boot: from just before spawning the process to the first 200 from GET /healthz,"
        " polled every 2 ms on new connections (two boots per round).",
        f"- SIGTERM: with the {settings['idle_counts'][-1]:,} idle connections open, time"
        " from the signal to the process's exit, and the close code each client got"
        " (`none`: the connection ended without a close frame).",
        f"- latency: {settings['latency_clients']:,} clients in one room; one sends a message,"
        " the time until the last of them has it, median of"
        f" {settings['latency_samples']} messages (includes the client reading all of them).",
        "- latency through Redis ((a) only, the one that can share rooms, with and without"
        " history): the same room"
        f" of {settings['latency_clients']:,} clients split evenly over two processes of"
        " (a) that share it through a local redis-server (`REDIS_URL`), both pinned to"
        " the server's CPU; the sender is on the first.",
        "",
        "## Load client",
        "",
        "One client for every server: `bench/client.py`, picows on uvloop in one process,",
        "driven by `bench/run.py` over a pipe. It offers per-message deflate as browsers do",
        "(`permessage-deflate; client_max_window_bits`), so servers that enable it by default",
        "pay for it. For each server: whether it negotiated deflate, the share of one CPU each"
        " side was busy over the load windows (the server should be near 100%), and the most"
        " that other processes of the machine used in any one window (noise: ideally 0%):",
        "",
        *(
            f"- {labels[k]}: deflate {'yes' if r['deflate'] else 'no'}; fan-out server"
            f" {r['fanout_server_busy']:.0%}, client {r['fanout_client_busy']:.0%}; echo server"
            f" {r['echo_server_busy']:.0%}, client {r['echo_client_busy']:.0%}; others up to"
            f" {r['others_busy']:.0%}; acks per message ≥ {r['acks_per_message']:.2f}"
            for k, r in rows.items()
        ),
        "",
        "## Machine",
        "",
        f"- CPU: {box['cpu']}, {box['cores']} cores"
        + (
            "; server pinned to CPU 0 (taskset), load client and driver to CPU 1"
            if pinned
            else "; not pinned (fewer than 2 CPUs available)"
        ),
        f"- memory: {box['memory_gib']} GiB; kernel {box['kernel']}; Python {box['python']}",
        "- load from other jobs just before a round (CPUs in use; run.py waits up to"
        " --quiet-wait seconds for less than 0.15): up to "
        f"{max(r['busy_before'] for r in rows.values()):.2f}; rounds measured again because"
        " other jobs used more than 0.25 CPUs during their load (--retries; the least"
        " disturbed attempt is kept): "
        f"{sum(r['remeasured'] for r in rows.values())}",
        "- libraries: " + ", ".join(f"{name} {v}" for name, v in versions().items()),
        "",
        *history_section(previous),
    ]
    return "\n".join(lines)


def shorten(argv: Sequence[str]) -> list[str]:
    """Show commands as a reader would type them: no absolute paths."""
    shown = []
    for arg in argv:
        path = Path(arg)
        if path.is_absolute() and path.name.startswith("python"):
            shown.append("python")
        elif path.is_absolute() and TEMPLATE in path.parents:
            shown.append(str(path.relative_to(TEMPLATE)))
        else:
            shown.append(arg)
    return shown
