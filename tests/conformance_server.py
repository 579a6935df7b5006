"""An echo server on a baked app's own plumbing, for the Autobahn Testsuite.

    python tests/conformance_server.py PROJECT_DIR

Everything but the handler is the app's: ``Config.from_environ()`` reads the
environment as ``python -m <package>`` does (PORT, HOST, MAX_MESSAGE_SIZE,
MAX_SEND_BUFFER, MAX_MESSAGES_PER_SECOND, COMPRESSION, EVENT_LOOP...), the
app's ``Routes`` answer ``/healthz`` and run ``process_request``, and the
app's ``start_server()`` calls ``serve()`` with the app's arguments, its
connection class (``connection.factory``: rate limit, send buffer limit),
and the connection counter around the handler. The handler sends every
message back through ``fanout.broadcast()``, the path every frame the app
sends takes (``hub.py``), text as text and binary as binary; complete text
messages reach it as they reach the hub, through the connection's fast path
(``Connection.receive_with``), and the rest through ``recv()``.

The Autobahn fuzzing client connects to ``/``, where the app serves its demo
page. The caller sets ``SERVE_PAGE=false``, as a user who wants no page does,
and the routes here treat ``/`` as the WebSocket endpoint instead of the
app's ``/ws/<room>``: the one thing changed besides the handler, since the
echo handler joins no room.

It serves until SIGTERM or SIGINT (the app's ``wait_for_signal``), then
closes every connection and exits 0. Imported instead, it gives the
settings and the report reader that ``tests/test_conformance.py`` and
``bench/conformance.py`` share.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from websockets.exceptions import ConnectionClosedError

#: The path the Autobahn fuzzing client opens (kosoku cannot be told another).
ECHO_PATH = "/"

#: The echo server's environment, set as a user would set the app's, and why.
SETTINGS = {
    # The fuzzer opens /, where the app serves its demo page unless told not to.
    "SERVE_PAGE": "false",
    # 9.1.6 and 9.2.6 send 16 MiB messages; the default limit is 64 KiB.
    "MAX_MESSAGE_SIZE": str(16 * 2**20),
    # Every echo waits in the send buffer, where the app drops a client past
    # MAX_SEND_BUFFER: a 16 MiB message and its frame header must fit.
    "MAX_SEND_BUFFER": str(32 * 2**20),
    # 9.7.x and 9.8.x send 1,000 messages back to back; the default, 20 per
    # second in bursts of 40, closes such a client with 1008.
    "MAX_MESSAGES_PER_SECOND": "10000",
    "LOG_LEVEL": "WARNING",
}

#: Autobahn's verdicts that pass, for the messages and for the close alike.
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})


def kosoku_command(
    kosoku: str,
    port: int,
    outdir: Path,
    *,
    include: tuple[str, ...] = (),
    exclude: tuple[str, ...] = (),
) -> list[str]:
    """The fuzzing client's command line, against the echo server on loopback."""
    command = [kosoku, f"127.0.0.1:{port}", "-o", str(outdir)]
    for case in include:
        command += ["-i", case]
    for case in exclude:
        command += ["-x", case]
    return command


def read_report(outdir: Path) -> dict[str, dict[str, Any]]:
    """Each case's entry of kosoku's ``index.json`` (Autobahn's format), by id.

    An entry holds ``behavior``, ``behaviorClose``, ``remoteCloseCode`` (the
    server's), ``duration`` (ms) and ``reportfile``, the case's own report.
    """
    index = json.loads((outdir / "index.json").read_text())
    (cases,) = index.values()  # keyed by agent: the one server under test
    return dict(cases)


def case_report(outdir: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """A case's own report: ``remoteCloseReason``, ``result``, the wire log..."""
    return json.loads((outdir / entry["reportfile"]).read_text())


def passed(entry: dict[str, Any]) -> bool:
    """Whether a case passed, as kosoku and Autobahn tell it."""
    return entry["behavior"] in PASSING and entry["behaviorClose"] in PASSING


def load(project: Path) -> dict[str, ModuleType]:
    """Import the baked project's modules that the echo server needs."""
    (main,) = project.glob("*/__main__.py")
    sys.path.insert(0, str(project))
    package = main.parent.name
    names = ("config", "connection", "fanout", "metrics", "routes", "server")
    return {name: importlib.import_module(f"{package}.{name}") for name in names}


async def serve_echo(app: dict[str, ModuleType], config: Any) -> None:
    fanout, metrics, server = app["fanout"], app["metrics"], app["server"]
    app_connection = app["connection"].Connection

    async def echo(connection: Any) -> None:
        """Send each message back as the app sends frames: fanout.broadcast()."""
        # fanout.broadcast() would quietly fall back to the library's
        # broadcast() for another class: then the suite would not test it.
        if not isinstance(connection, app_connection):
            raise TypeError(f"{type(connection)} is not the app's connection class")
        # As hub.py does once a connection is live: complete text messages
        # take the fast path (Connection.process_event), the rest recv().
        connection.receive_with(echo_now)
        try:
            async for message in connection:
                connection.receive_with(None)  # as hub.py: the rest waits
                fanout.broadcast([connection], message)
                connection.receive_with(echo_now)
        except ConnectionClosedError:
            pass  # the client broke the protocol: as hub.py, no traceback
        finally:
            connection.receive_with(None)

    def echo_now(connection: Any, room: str, text: str) -> None:
        fanout.broadcast([connection], text)

    counter = metrics.ConnectionCounter()
    routes = app["routes"].Routes(
        lambda path: path == ECHO_PATH,
        server.create_broker(config),  # REDIS_URL unset: the local broker
        worker_id=config.worker_id,
        serve_page=config.serve_page,
        serve_metrics=config.serve_metrics,
        max_connections=config.max_connections,
        open_connections=lambda: counter.open,
    )
    listening = await server.start_server(config, counter.wrap(echo), routes)
    logging.info("echo server listening on port %d", config.port)
    await server.wait_for_signal(server.SHUTDOWN_SIGNALS)
    listening.close()
    await listening.wait_closed()


def main() -> int:
    app = load(Path(sys.argv[1]).resolve())
    config = app["config"].Config.from_environ()
    if config.serve_page:
        print("set SERVE_PAGE=false: the page would answer the fuzzer at /", file=sys.stderr)
        return 2
    logging.basicConfig(stream=sys.stdout, level=config.log_level)
    loop_factory = app["server"].event_loop_factory(config.event_loop)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(serve_echo(app, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
