"""Rooms shared across processes through a real redis-server, and worker processes."""

from __future__ import annotations

import contextlib
import http.client
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed, ConnectionClosedOK
from websockets.sync.client import ClientConnection, connect

import platforms
from conftest import (
    RedisServer,
    Started,
    app_environment,
    chat_frame,
    echo,
    free_port,
    hear,
    next_frame,
    package_of,
    running,
    wait_until_healthy,
)

BURST = 1000


@pytest.fixture(scope="module")
def project(bake: Callable[..., Path]) -> Path:
    return bake(use_redis=True)


def wait_until_broker(app: Started, state: str, timeout: float = 10) -> None:
    app.wait_for(lambda: f"broker: {state}" in app.health()[1], f"broker {state}", timeout)


@pytest.fixture
def pair(
    project: Path, start_app: Callable[..., Started], redis_server: RedisServer
) -> tuple[Started, Started]:
    """Two app processes sharing one Redis, as two dynos or machines would."""
    # A burst of 1,000 messages from one client is what the rate limit is
    # there to stop: lift it here, where the subject is ordering.
    env = {"REDIS_URL": redis_server.url, "MAX_MESSAGES_PER_SECOND": "100000"}
    apps = (start_app(project, **env), start_app(project, **env))
    for app in apps:
        wait_until_broker(app, "connected")
    return apps


def test_a_burst_crosses_processes_exactly_once_and_in_order(
    pair: tuple[Started, Started],
) -> None:
    a, b = pair
    sent = [f"message {i}" for i in range(BURST)]
    client_ids = [f"burst-{i}" for i in range(BURST)]
    with connect(a.ws_url("/ws/burst")) as on_a, connect(b.ws_url("/ws/burst")) as on_b:
        for client in (on_a, on_b):
            assert next_frame(client)["type"] == "joined"
        for text, client_id in zip(sent, client_ids, strict=True):
            on_b.send(chat_frame(text, client_id))
        on_a_frames = [next_frame(on_a, timeout=10) for _ in sent]
        # The sender gets every message too, and one ack for each of its own.
        on_b_frames = [next_frame(on_b, timeout=10) for _ in range(2 * BURST)]
        for client in (on_a, on_b):
            with pytest.raises(TimeoutError):  # and nothing twice
                client.recv(timeout=0.5)

    assert [frame["type"] for frame in on_a_frames] == ["message"] * BURST
    assert [frame["text"] for frame in on_a_frames] == sent
    assert {(frame["room"], frame["from"]) for frame in on_a_frames} == {("burst", None)}
    ids = [frame["id"] for frame in on_a_frames]
    assert len(set(ids)) == BURST
    messages = [frame for frame in on_b_frames if frame["type"] == "message"]
    acks = [frame for frame in on_b_frames if frame["type"] == "ack"]
    assert len(messages) == len(acks) == BURST
    assert messages == on_a_frames  # the same frames, ids included, in the same order
    assert [(ack["client_id"], ack["id"]) for ack in acks] == list(
        zip(client_ids, ids, strict=True)
    )


def test_a_shared_room_stays_apart_from_other_rooms(pair: tuple[Started, Started]) -> None:
    a, b = pair
    with connect(a.ws_url("/ws/one")) as on_a, connect(b.ws_url("/ws/two")) as on_b:
        assert echo(on_b, "for room two") == "for room two"
        assert next_frame(on_a)["type"] == "joined"
        with pytest.raises(TimeoutError):
            on_a.recv(timeout=0.5)


def exchange_locally(app: Started, text: str) -> None:
    with connect(app.ws_url("/ws/local")) as sender, connect(app.ws_url("/ws/local")) as peer:
        assert next_frame(peer)["type"] == "joined"  # before the message is sent
        assert echo(sender, text) == text
        assert hear(peer) == text


def first_crossing(sender: ClientConnection, receiver: ClientConnection, timeout: float) -> float:
    """Send probes until one arrives on the other process; return how long it took."""
    started = time.monotonic()
    for attempt in range(int(timeout / 0.1)):
        sender.send(chat_frame(f"probe {attempt}"))
        with contextlib.suppress(TimeoutError):
            if hear(receiver, timeout=0.1).startswith("probe"):
                return time.monotonic() - started
    pytest.fail(f"no message crossed processes within {timeout}s")


def assert_rooms_span(pair: tuple[Started, Started], within: float) -> None:
    """A message sent on one process reaches the other within ``within`` s.

    A process that gets its Redis subscription back and cannot replay what a
    room missed meanwhile closes the room's members with 1012 (PROTOCOL.md):
    the probes may be among them, and reconnect then, as any client would.
    """
    a, b = pair
    started = time.monotonic()
    while True:
        left = within - (time.monotonic() - started)
        with connect(a.ws_url("/ws/probe")) as on_a, connect(b.ws_url("/ws/probe")) as on_b:
            try:
                first_crossing(on_b, on_a, timeout=left)
                assert time.monotonic() - started < within
                return
            except ConnectionClosed:
                if 1012 not in (on_a.close_code, on_b.close_code):
                    raise


def test_losing_redis_keeps_local_delivery_and_recovers_on_its_own(
    pair: tuple[Started, Started], redis_server: RedisServer
) -> None:
    redis_server.stop()
    for app in pair:
        wait_until_broker(app, "disconnected")
        assert app.health()[0] == 200  # a Redis blip must not fail health checks
        exchange_locally(app, "still here")
        assert app.process.poll() is None

    redis_server.start()
    assert_rooms_span(pair, within=5)
    for app in pair:
        assert app.log.count("broker lost Redis") == 1, app.log
        assert app.log.count("broker connected to Redis") == 2, app.log


def test_a_hung_redis_is_noticed_and_recovery_follows_on_its_own(
    pair: tuple[Started, Started], redis_server: RedisServer
) -> None:
    # A frozen Redis closes nothing: only the heartbeat can tell.
    redis_server.pause()
    for app in pair:
        wait_until_broker(app, "disconnected", timeout=15)
        exchange_locally(app, "still here")
    redis_server.resume()
    for app in pair:
        wait_until_broker(app, "connected", timeout=10)
    assert_rooms_span(pair, within=5)


def test_refused_publishes_are_answered_unavailable_and_do_not_stick(
    project: Path, pair: tuple[Started, Started], redis_server: RedisServer
) -> None:
    # Redis refuses PUBLISH (as a managed Redis over its limits would) while
    # connections stay up: the script stores nothing, the sender is told to
    # send again (no ack), and once PUBLISH is allowed again, the same frame
    # is published once and rooms span both processes again by themselves.
    a, _ = pair
    admin = redis.Redis(port=redis_server.port)
    with connect(a.ws_url("/ws/refused")) as sender:
        assert next_frame(sender)["type"] == "joined"
        admin.execute_command("ACL", "SETUSER", "default", "-publish")
        try:
            sender.send(chat_frame("refused", client_id="refused-1"))
            answer = next_frame(sender)
            assert answer["type"] == "error", answer
            assert (answer["error"], answer["client_id"]) == ("unavailable", "refused-1")
            assert admin.xlen(package_of(project) + ":{refused}:history") == 0
        finally:
            admin.execute_command("ACL", "SETUSER", "default", "+publish")
        assert echo(sender, "refused", client_id="refused-1") == "refused"
    admin.close()
    assert_rooms_span(pair, within=10)


def test_without_redis_url_rooms_are_local_and_it_says_so_once(
    project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(project)
    assert app.health() == (200, "ok\nbroker: local\n")
    exchange_locally(app, "alone")
    assert app.log.count("rooms are process-local") == 1


def test_startup_raises_the_open_files_soft_limit_to_the_hard_limit(
    project: Path, tmp_path: Path
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    package = package_of(project)
    port = free_port()
    log = tmp_path / "app.log"
    command = ["bash", "-c", f"ulimit -Sn 256 && exec {sys.executable} -m {package}"]
    with running(command, project, app_environment(PORT=str(port)), log) as process:
        wait_until_healthy(process, port, log)
    expected = "unlimited" if hard == resource.RLIM_INFINITY else str(hard)
    assert f"open files limit: {expected}" in log.read_text()


# --- WEB_CONCURRENCY: workers on one port ------------------------------------


def worker_of(client: ClientConnection) -> str:
    return client.response.headers["X-Worker"]


def child_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def worker_pid(parent: Started, worker_id: str) -> int:
    """The pid of the worker with this WORKER_ID (children come in any order)."""
    for pid in child_pids(parent.process.pid):
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"WORKER_ID={worker_id}".encode() in environ:
            return pid
    pytest.fail(f"no worker {worker_id} among {child_pids(parent.process.pid)}")


@pytest.fixture
def workers(project: Path, start_app: Callable[..., Started], redis_server: RedisServer) -> Started:
    parent = start_app(project, REDIS_URL=redis_server.url, WEB_CONCURRENCY="2")
    parent.wait_for(lambda: len(child_pids(parent.process.pid)) == 2, "two workers")
    parent.wait_for(lambda: parent.log.count("broker connected") == 2, "both brokers")
    return parent


def one_client_per_worker(
    parent: Started, stack: contextlib.ExitStack
) -> dict[str, ClientConnection]:
    """Connect until both workers hold a client; the kernel picks the worker."""
    clients: dict[str, ClientConnection] = {}
    for _ in range(64):
        client = stack.enter_context(connect(parent.ws_url("/ws/spread")))
        assert next_frame(client)["type"] == "joined"
        clients.setdefault(worker_of(client), client)
        if len(clients) == 2:
            return clients
    pytest.fail(f"64 connections all landed on worker {list(clients)}")


def test_workers_share_the_port_and_the_rooms(workers: Started) -> None:
    with contextlib.ExitStack() as stack:
        clients = one_client_per_worker(workers, stack)
        assert sorted(clients) == ["1", "2"]
        clients["1"].send(chat_frame("from worker 1"))
        assert hear(clients["2"]) == "from worker 1"


def test_sigterm_to_the_parent_drains_every_worker_and_exits_0(workers: Started) -> None:
    with contextlib.ExitStack() as stack:
        clients = one_client_per_worker(workers, stack)
        workers.process.send_signal(signal.SIGTERM)
        for client in clients.values():
            with pytest.raises(ConnectionClosedOK):
                client.recv(timeout=10)
            assert client.close_code == 1001
        assert workers.process.wait(timeout=30) == 0
    assert "ERROR" not in workers.log


@pytest.mark.parametrize("victim", [0, 1], ids=["first worker", "second worker"])
def test_a_worker_dying_at_startup_makes_the_parent_stop_the_others_and_fail(
    workers: Started, victim: int
) -> None:
    # Within MIN_UPTIME (10 s) of its start: restarting it would only loop.
    pids = child_pids(workers.process.pid)
    os.kill(pids[victim], signal.SIGKILL)
    assert workers.process.wait(timeout=30) != 0
    with pytest.raises(ProcessLookupError):
        os.kill(pids[1 - victim], 0)
    assert "exited with -9 " in workers.log
    assert "after it started: stopping the others" in workers.log


# --- /metrics with workers: each scrape reports the instance ------------------

#: workers.MIN_UPTIME: a worker dying later than this is started again.
MIN_UPTIME = 10.0
#: metrics.PUBLISH_INTERVAL, and some margin.
PUBLISHED_WITHIN = 1.5


def scrape(app: Started) -> tuple[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]]:
    """The worker that answered /metrics, and the samples it gave."""
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        response = conn.getresponse()
        assert response.status == 200
        body = response.read().decode()
        worker = response.headers["X-Worker"]
    finally:
        conn.close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }
    return worker, samples


def scrapes_from_each_worker(app: Started, count: int = 3) -> dict[str, list[dict]]:
    """Scrape until each worker answered ``count`` times (the kernel picks)."""
    answers: dict[str, list[dict]] = {}
    for _ in range(200):
        worker, samples = scrape(app)
        answers.setdefault(worker, []).append(samples)
        if len(answers) == 2 and all(len(got) >= count for got in answers.values()):
            return answers
    pytest.fail(f"200 scrapes, answered by {[(w, len(a)) for w, a in answers.items()]}")


def connect_clients(
    app: Started, stack: contextlib.ExitStack, count: int
) -> list[ClientConnection]:
    clients = [stack.enter_context(connect(app.ws_url("/ws/metered"))) for _ in range(count)]
    for client in clients:
        assert next_frame(client)["type"] == "joined"
    return clients


def test_every_scrape_counts_every_workers_connections(workers: Started) -> None:
    with contextlib.ExitStack() as stack:
        clients = connect_clients(workers, stack, 20)
        assert {worker_of(client) for client in clients} == {"1", "2"}
        time.sleep(PUBLISHED_WITHIN)
        for answers in scrapes_from_each_worker(workers).values():
            for samples in answers:
                assert samples[("websocket_connections_open", ())] == 20
                assert samples[("websocket_connections_opened_total", ())] == 20


def test_every_scrape_counts_every_workers_messages(workers: Started) -> None:
    with contextlib.ExitStack() as stack:
        clients = connect_clients(workers, stack, 6)
        for number, client in enumerate(clients):
            client.send(chat_frame(f"message {number}"))
        for client in clients:
            for _ in clients:
                hear(client)
        time.sleep(PUBLISHED_WITHIN)
        for answers in scrapes_from_each_worker(workers).values():
            for samples in answers:
                assert samples[("websocket_messages_received_total", ())] == 6
                assert samples[("websocket_messages_delivered_total", ())] == 36


def test_closes_are_summed_by_code_across_workers(workers: Started) -> None:
    with contextlib.ExitStack() as stack:
        clients = connect_clients(workers, stack, 10)
    assert {worker_of(client) for client in clients} == {"1", "2"}
    time.sleep(PUBLISHED_WITHIN)
    for answers in scrapes_from_each_worker(workers).values():
        for samples in answers:
            assert samples[("websocket_connections_closed_total", (("code", "1000"),))] == 10
            assert samples[("websocket_connections_open", ())] == 0


def kill_worker(parent: Started, worker_id: str) -> int:
    """SIGKILL a worker; return its pid once the parent says it restarts it."""
    victim = worker_pid(parent, worker_id)
    os.kill(victim, signal.SIGKILL)
    parent.wait_for(lambda: "exited with -9: starting it again" in parent.log, "restart")
    return victim


def wait_replaced(parent: Started, victim: int) -> None:
    """Wait until a new worker stands in for ``victim`` and its broker is connected."""
    parent.wait_for(
        lambda: (
            victim not in child_pids(parent.process.pid)
            and len(child_pids(parent.process.pid)) == 2
        ),
        "a new worker",
    )
    parent.wait_for(lambda: parent.log.count("broker connected") == 3, "its broker")


def test_a_worker_killed_once_serving_is_started_again_and_the_others_go_on(
    workers: Started,
) -> None:
    time.sleep(MIN_UPTIME)
    with contextlib.ExitStack() as stack:
        clients = one_client_per_worker(workers, stack)
        victim = kill_worker(workers, "1")
        with pytest.raises(ConnectionClosed):
            clients["1"].recv(timeout=10)
        clients["2"].send(chat_frame("still here"))
        assert hear(clients["2"]) == "still here"
        wait_replaced(workers, victim)
    assert workers.process.poll() is None


def test_a_restarted_workers_counters_are_kept_and_its_gauges_dropped(
    workers: Started,
) -> None:
    time.sleep(MIN_UPTIME)
    with contextlib.ExitStack() as stack:
        clients = connect_clients(workers, stack, 10)
        on_first = sum(worker_of(client) == "1" for client in clients)
        assert 0 < on_first < 10
        time.sleep(PUBLISHED_WITHIN)
        wait_replaced(workers, kill_worker(workers, "1"))
        time.sleep(PUBLISHED_WITHIN)
        for answers in scrapes_from_each_worker(workers).values():
            for samples in answers:
                assert samples[("websocket_connections_opened_total", ())] == 10
                assert samples[("websocket_connections_open", ())] == 10 - on_first


def test_web_concurrency_without_redis_runs_one_process_and_says_why(
    project: Path, start_app: Callable[..., Started]
) -> None:
    app = start_app(project, WEB_CONCURRENCY="3")
    assert child_pids(app.process.pid) == []
    assert "WEB_CONCURRENCY=3 ignored: rooms are process-local" in app.log
    app.process.send_signal(signal.SIGTERM)
    assert app.process.wait(timeout=10) == 0


def test_a_malformed_redis_url_stops_startup_naming_the_variable(project: Path) -> None:
    package = package_of(project)
    result = subprocess.run(
        [sys.executable, "-m", package],
        cwd=project,
        env=app_environment(REDIS_URL="http://example.invalid"),
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "configuration error: REDIS_URL must start with one of redis://, rediss://, unix://"
    ]


# --- Platform wiring ------------------------------------------------------------


@pytest.mark.parametrize("use_redis", [True, False])
def test_only_a_redis_project_depends_on_redis(bake: Callable[..., Path], use_redis: bool) -> None:
    requirements = (bake(use_redis=use_redis) / "requirements.txt").read_text()
    assert ("redis==" in requirements) is use_redis


@pytest.mark.parametrize("use_redis", [True, False])
def test_heroku_button_adds_the_key_value_store_add_on(
    bake: Callable[..., Path], use_redis: bool
) -> None:
    app = platforms.app_json(bake(use_redis=use_redis))
    plans = [addon["plan"] for addon in app.get("addons", [])]
    assert plans == (["heroku-redis:mini"] if use_redis else [])
    # Heroku's Key-Value Store presents a self-signed certificate.
    assert (app["env"].get("REDIS_SSL_CERT_REQS", {}).get("value") == "none") is use_redis


def test_render_feeds_its_key_value_service_into_redis_url(
    bake: Callable[..., Path],
) -> None:
    services = platforms.render_services(bake(use_redis=True))
    store = services["keyvalue"]
    assert store["ipAllowList"] == []  # no access from outside the account
    (redis_url,) = [var for var in services["web"]["envVars"] if var["key"] == "REDIS_URL"]
    assert redis_url["fromService"] == {
        "type": "keyvalue",
        "name": store["name"],
        "property": "connectionString",
    }


def test_render_without_redis_has_only_the_web_service(bake: Callable[..., Path]) -> None:
    assert list(platforms.render_services(bake(use_redis=False))) == ["web"]


def test_the_readme_tells_how_to_give_fly_a_redis(bake: Callable[..., Path]) -> None:
    readme = (bake(use_redis=True) / "README.md").read_text()
    assert "fly redis create" in readme
    assert "fly secrets set REDIS_URL=" in readme


def test_sigterm_while_workers_are_starting_still_exits_0(
    project: Path, tmp_path: Path, redis_server: RedisServer
) -> None:
    # Heroku may stop a dyno that is still booting: a worker that has not
    # installed its handlers yet must still shut down gracefully.
    package = package_of(project)
    env = app_environment(PORT=str(free_port()), REDIS_URL=redis_server.url, WEB_CONCURRENCY="2")
    log = tmp_path / "app.log"
    with running([sys.executable, "-m", package], project, env, log) as process:
        deadline = time.monotonic() + 10
        while "started 2 workers" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.01)
        os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()
