"""Shared fixtures: bake the template with cookiecutter's API, run what it bakes."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import http.client
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from cookiecutter.main import cookiecutter
from websockets.sync.client import ClientConnection

if TYPE_CHECKING:
    from playwright.sync_api import Browser

#: Debian's Chromium, headless, as root, on a machine with no network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # No network here: keep Chromium from trying to reach one.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

TEMPLATE = Path(__file__).resolve().parents[1]
SPEC: dict[str, Any] = json.loads((TEMPLATE / "cookiecutter.json").read_text())
IN_CI = os.environ.get("CI", "").lower() == "true"  # .ci/run sets CI=true

#: A valid non-default value for every free-text variable, chosen to stress
#: the rendering: non-ASCII, quotes, backslashes, markup. The option matrix
#: takes booleans and choices from cookiecutter.json by itself; a new text
#: variable must get a sample here (test_every_variable_is_covered checks).
TEXT_SAMPLES: dict[str, str] = {
    "project_name": 'Café "Chat" \\o/ <b>&',
    "project_slug": "chat2",
    "package_name": "chat_service",
    "description": 'Says "hi" \\ en français: ça marche & <script>',
    "author_name": "Zoë O'Brien-Łukasiewicz",
    "fly_region": "fra",
}


def option_variants(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Answers that together give every option a non-default value once.

    Returns {test id: extra_context}. Raises for a variable whose kind it
    does not know, so a new kind of variable cannot go untested.
    """
    variants: dict[str, dict[str, Any]] = {"defaults": {}}
    for name, default in spec.items():
        if name.startswith("_"):
            continue
        if isinstance(default, bool):
            variants[f"{name}={not default}"] = {name: not default}
        elif isinstance(default, list):
            for choice in default[1:]:
                variants[f"{name}={choice}"] = {name: choice}
        elif isinstance(default, str) and name in TEXT_SAMPLES:
            variants[f"{name}=sample"] = {name: TEXT_SAMPLES[name]}
        else:
            raise LookupError(f"cookiecutter.json variable {name!r} is not covered")
    return variants


def package_of(project: Path) -> str:
    """The name of a baked project's package: the one with a ``__main__``."""
    (main,) = project.glob("*/__main__.py")
    return main.parent.name


def require_tool(name: str) -> str:
    """Return the path of a command; without it, skip (fail under CI=true)."""
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        message = f"{name} is not installed (see .ci/run for how CI installs it)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)  # outside CI only: under CI=true it failed above
    return path


def free_port() -> int:
    """Return a TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def app_environment(**extra: str) -> dict[str, str]:
    """Environment for a baked app: this interpreter first on PATH, loopback only."""
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HOST": "127.0.0.1",
        **extra,
    }


@pytest.fixture(scope="session")
def uv_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uv's cache for this session: empty at first, so the first sync downloads."""
    return tmp_path_factory.mktemp("uv-cache")


def uv_environment(cache: Path, **extra: str) -> dict[str, str]:
    """A baked app's environment for uv: this interpreter, never a download.

    A baked project's .python-version names the platforms' Python (3.14 by
    default), which this machine may lack; uv would download it.
    """
    require_tool("uv")
    defaults = {
        "UV_CACHE_DIR": str(cache),
        "UV_PYTHON": sys.executable,
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    environment = app_environment(**(defaults | extra))
    environment.pop("VIRTUAL_ENV", None)  # the tests' own venv, not the project's
    return environment


def with_virtualenv(environment: dict[str, str], venv: Path) -> dict[str, str]:
    """``environment`` with ``venv`` as uv's project environment, first on PATH.

    The tests' own interpreter leaves PATH (uv stays, alone in a directory of
    its own): the app finds only what the build installed into ``venv``.
    """
    tools = venv.parent / f"{venv.name}-tools"
    tools.mkdir(exist_ok=True)
    if not (tools / "uv").exists():
        (tools / "uv").symlink_to(require_tool("uv"))
    ours = str(Path(sys.executable).parent)
    rest = [entry for entry in environment["PATH"].split(os.pathsep) if entry != ours]
    return {
        **environment,
        "UV_PROJECT_ENVIRONMENT": str(venv),
        "PATH": os.pathsep.join([str(venv / "bin"), str(tools), *rest]),
    }


def run_build(commands: list[str], project: Path, environment: dict[str, str]) -> None:
    """Run a platform's build commands in ``project``, failing with their output."""
    for command in commands:
        result = subprocess.run(
            ["bash", "-e", "-c", command], cwd=project, env=environment,
            capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert result.returncode == 0, f"{command}:\n{result.stdout}{result.stderr}"


# --- Wire protocol v1, as a client speaks it (PROTOCOL.md in a baked project) ---


def chat_frame(text: str, client_id: str | None = None) -> str:
    """A client's ``message`` frame: what a client sends to say ``text``."""
    return json.dumps({"type": "message", "text": text, "client_id": client_id})


def next_frame(client: ClientConnection, timeout: float = 5) -> dict[str, Any]:
    """The next frame the server sent, decoded; every frame is a JSON object."""
    frame = json.loads(client.recv(timeout=timeout))
    assert isinstance(frame, dict) and "type" in frame, frame
    return frame


def hear(client: ClientConnection, timeout: float = 5) -> str:
    """The text of the next ``message`` frame.

    ``joined`` and ``ack`` frames on the way are skipped; an ``error`` frame,
    or any other, fails the test. TimeoutError if none comes within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    while True:
        frame = next_frame(client, max(0.01, deadline - time.monotonic()))
        if frame["type"] == "message":
            return frame["text"]
        assert frame["type"] in ("joined", "ack"), frame


_client_ids = itertools.count()


def bearer_headers(secret: str | None) -> dict[str, str]:
    """An ``Authorization`` header with a token signed by ``secret``, if any."""
    if secret is None:
        return {}
    token = jwt.encode({"sub": "tests", "exp": time.time() + 600}, secret, algorithm="HS256")
    return {"Authorization": f"Bearer {token}"}


def echo(
    client: ClientConnection, text: str, timeout: float = 5, client_id: str | None = None
) -> str:
    """Say ``text``; return the text of the message that comes back to the sender.

    It waits for the server's ``ack`` too, so nothing of this exchange is left
    to read: in a room where no one else talks, the next frame is a new one.
    """
    client_id = client_id or f"test-{next(_client_ids)}"
    client.send(chat_frame(text, client_id))
    deadline = time.monotonic() + timeout
    heard: str | None = None
    acked = False
    while heard is None or not acked:
        frame = next_frame(client, max(0.01, deadline - time.monotonic()))
        if frame["type"] == "message" and heard is None:
            heard = frame["text"]
        elif frame["type"] == "ack" and frame["client_id"] == client_id:
            acked = True
        else:
            assert frame["type"] == "joined", frame
    return heard


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user config that keeps cookiecutter's replay files out of $HOME."""
    root = tmp_path_factory.mktemp("cookiecutter-home")
    config = root / "config.yaml"
    config.write_text(f"cookiecutters_dir: {root / 'templates'}\nreplay_dir: {root / 'replay'}\n")
    return config


@pytest.fixture(scope="session")
def bake(
    tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path
) -> Callable[..., Path]:
    """Bake the template with the given answers, once per set of answers."""
    baked: dict[str, Path] = {}

    def bake(**answers: Any) -> Path:
        key = json.dumps(answers, sort_keys=True)
        if key not in baked:
            output_dir = tmp_path_factory.mktemp("baked")
            project = cookiecutter(
                str(TEMPLATE),
                no_input=True,
                extra_context=answers,
                output_dir=str(output_dir),
                config_file=str(cookiecutter_config),
            )
            baked[key] = Path(project)
        return baked[key]

    return bake


@pytest.fixture(scope="session")
def default_project(bake: Callable[..., Path]) -> Path:
    return bake()


#: Answers that turn on every deploy target, the optional ones included.
EVERY_TARGET = {
    "deploy_heroku": True,
    "deploy_fly": True,
    "deploy_render": True,
    "deploy_railway": True,
    "deploy_koyeb": True,
    "deploy_kubernetes": True,
}


@pytest.fixture(scope="session")
def every_target_project(bake: Callable[..., Path]) -> Path:
    return bake(**EVERY_TARGET)


@pytest.fixture
def cli_environment(cookiecutter_config: Path) -> Iterator[dict[str, str]]:
    yield {**os.environ, "COOKIECUTTER_CONFIG": str(cookiecutter_config)}


def http_request(port: int, method: str, path: str) -> tuple[int, str]:
    """Send one HTTP request on loopback; return the status and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    port: int,
    log: Path,
    *,
    path: str = "/healthz",
    method: str = "GET",
    deadline: float = 20.0,
) -> None:
    """Poll the health check like a platform does, until it answers 200."""
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        if process.poll() is not None:
            pytest.fail(f"exited with {process.returncode} before healthy:\n{log.read_text()}")
        try:
            if http_request(port, method, path)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    pytest.fail(f"not healthy after {deadline}s:\n{log.read_text()}")


@contextlib.contextmanager
def running(
    command: list[str], cwd: Path, env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start ``command`` in its own process group; kill the group on the way out."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=cwd, env=env, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            yield process
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()


@dataclasses.dataclass
class Started:
    """A baked app (or its worker parent) started as a platform would."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text()

    def ws_url(self, path: str = "/ws") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def get(self, path: str) -> tuple[int, str]:
        return http_request(self.port, "GET", path)

    def health(self) -> tuple[int, str]:
        return self.get("/healthz")

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {timeout}s:\n{self.log}")
            time.sleep(0.05)


def assert_nothing_logged_at_error(app: Started) -> None:
    """Nothing at ERROR or above, and no traceback, in the app's log so far."""
    errors = [line for line in app.log.splitlines() if line.startswith(("ERROR", "CRITICAL"))]
    assert errors == [] and "Traceback" not in app.log, app.log


def launch_app(project: Path, log_dir: Path, stack: contextlib.ExitStack, **env: str) -> Started:
    """Start ``python -m <package>`` until ``stack`` closes; wait until healthy."""
    port = int(env.pop("PORT", free_port()))
    log = log_dir / f"app-{port}.log"
    command = [sys.executable, "-m", package_of(project)]
    environment = app_environment(PORT=str(port), **env)
    process = stack.enter_context(running(command, project, environment, log))
    wait_until_healthy(process, port, log)
    return Started(process, port, log)


@pytest.fixture
def start_app(tmp_path: Path) -> Iterator[Callable[..., Started]]:
    """Start apps of baked projects; kill leftovers after the test."""
    with contextlib.ExitStack() as stack:
        yield functools.partial(launch_app, log_dir=tmp_path, stack=stack)


class RedisServer:
    """A real redis-server on a free loopback port, that tests may stop and restart."""

    def __init__(self, executable: str, log: Path) -> None:
        self.executable = executable
        self.port = free_port()
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [
            self.executable, "--port", str(self.port), "--bind", "127.0.0.1",
            "--save", "", "--appendonly", "no",
        ]  # fmt: skip
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while not self.answers_ping():
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start:\n{self.log.read_text()}")
            time.sleep(0.05)

    def answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16) == b"+PONG\r\n"
        except OSError:
            return False

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): it hangs without closing a connection."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(require_tool("redis-server"), tmp_path / "redis.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium, driven by Playwright, shared by a module's tests."""
    from playwright.sync_api import sync_playwright

    chromium = require_tool("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield browser
        browser.close()
