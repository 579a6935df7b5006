"""Process lifecycle: listen, serve until told to stop, then drain.

Platforms stop a process with a signal and kill it after a grace period:
Heroku sends SIGTERM then SIGKILL 30 s later; Fly.io sends SIGINT unless
configured otherwise; Render sends SIGTERM. On either signal the server
stops accepting connections, reports unhealthy, closes every WebSocket with
1001 (going away) so clients reconnect elsewhere, and waits for handlers to
return, for at most ``SHUTDOWN_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import resource
import signal
from collections.abc import Callable

from websockets.asyncio.server import Server, serve

from . import auth, connection, metrics
from .broker import Broker
from .config import Config
from .hub import Hub
from .metrics import Handler
from .rooms import Chat
from .routes import Routes

__all__ = [
    "SHUTDOWN_SIGNALS",
    "create_broker",
    "event_loop_factory",
    "raise_open_files_limit",
    "run",
]

logger = logging.getLogger(__name__)

SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)

#: Seconds allowed, after connections are closed, to release the broker.
CLEANUP_TIMEOUT = 3.0
#: Seconds to wait for the broker before listening: clients served before
#: it reaches Redis would have their messages kept to this process.
BROKER_READY_TIMEOUT = 5.0


async def run(config: Config) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully."""
    loop_type = type(asyncio.get_running_loop())
    logger.info(
        "event loop: %s.%s; compression: %s",
        loop_type.__module__,
        loop_type.__qualname__,
        config.compression,
    )
    raise_open_files_limit()
    broker = create_broker(config)
    verifier = auth.verifier_for(config)
    if verifier is None:
        logger.warning(
            "neither JWT_SECRET nor JWKS_URL is set: "
            "anyone can connect and join any room"
        )
    hub = Hub(
        broker,
        Chat(),
        max_text_length=config.max_text_length,
        verifier=verifier,
    )
    counter = metrics.ConnectionCounter()
    routes = Routes(
        hub.accepts,
        broker,
        authorizes=hub.authorizes,
        verifier=verifier,
        worker_id=config.worker_id,
        serve_page=config.serve_page,
        serve_metrics=config.serve_metrics,
        max_connections=config.max_connections,
        open_connections=lambda: counter.open,
    )
    broker_task = asyncio.create_task(broker.run())
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(BROKER_READY_TIMEOUT):
            await broker.wait_ready()
    try:
        server = await start_server(config, counter.wrap(hub.handler), routes)
    except OSError as exc:
        logger.critical("cannot listen on port %d: %s", config.port, exc)
        raise SystemExit(1) from None
    metrics.CONNECTIONS_OPEN.set_function(lambda: counter.open)
    metrics.BROKER_CONNECTED.set_function(lambda: broker.status == "connected")
    shared = metrics.share(config.worker_id)
    publisher = (
        None if shared is None else asyncio.create_task(metrics.keep_published(shared))
    )

    received = await wait_for_signal(SHUTDOWN_SIGNALS)
    logger.info(
        "received %s: closing %d connections", received.name, len(server.connections)
    )
    routes.shutting_down = True
    # Closing thousands of connections allocates enough to trigger several
    # full garbage collections, each walking every object of every connection
    # (0.3 s each with 10,000 of them): half the shutdown's CPU time. The
    # process is about to exit, and its memory with it: collect no more.
    gc.disable()
    try:
        server.close()  # Closes open connections with 1001 (going away).
        try:
            async with asyncio.timeout(config.shutdown_timeout):
                await server.wait_closed()
        except TimeoutError:
            logger.warning(
                "connections still open after SHUTDOWN_TIMEOUT=%gs: exiting anyway",
                config.shutdown_timeout,
            )
            # Drop what is left, as asyncio.Server.abort_clients() would (3.13+).
            for connection in server.all_connections:
                connection.transport.abort()
        else:
            logger.info("all connections closed: exiting")
        await cancel(broker_task)
        if publisher is not None:
            await cancel(publisher)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLEANUP_TIMEOUT):
                await broker.close()
    finally:
        gc.enable()  # for callers that go on, such as tests running run()


async def start_server(config: Config, handler: Handler, routes: Routes) -> Server:
    """Listen, with the limits of the configuration."""
    origins: list[str | None] | None = None
    if config.allowed_origins is not None:
        # Browsers always send Origin; other clients may not. None lets the
        # latter in: cross-site WebSocket hijacking needs a browser.
        origins = [*config.allowed_origins, None]
    return await serve(
        handler,
        config.host,
        config.port,
        process_request=routes.process_request,
        process_response=routes.process_response,
        create_connection=connection.factory(config.max_messages_per_second),
        write_limit=config.max_send_buffer,
        max_size=config.max_message_size,
        open_timeout=config.open_timeout,
        origins=origins,
        # Off unless COMPRESSION=deflate: per-message deflate costs about
        # 32 KiB per connection and CPU on every message, and chat messages
        # are too short to gain from it.
        compression="deflate" if config.compression == "deflate" else None,
        # Workers share the port; the kernel spreads connections among them.
        reuse_port=config.worker_id is not None,
    )


async def cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait, a few seconds at most, until it has ended.

    Cancel again if needed: a cancellation landing while redis-py connects
    can be swallowed (seen with redis 8.1), which would hang the shutdown.
    """
    for _ in range(int(CLEANUP_TIMEOUT)):
        if task.done():
            return
        task.cancel()
        await asyncio.wait({task}, timeout=1)
    logger.warning("%s did not stop: exiting anyway", task.get_coro())


def create_broker(config: Config) -> Broker:
    """Share rooms through Redis when configured, else keep them local."""
{%- if cookiecutter.use_redis %}
    if config.redis_url is not None:
        # Imported only when used: redis takes longer to import than
        # everything else the app needs.
        from .redis_broker import RedisBroker

        return RedisBroker(
            config.redis_url,
            channel_prefix=f"{__package__}:",
            ssl_cert_reqs=config.redis_ssl_cert_reqs,
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            history_max_bytes=config.history_max_bytes,
        )
{%- endif %}
    return Broker(
        history_size=config.history_size,
        history_ttl=config.history_ttl,
        history_max_bytes=config.history_max_bytes,
    )


def event_loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """Return what creates the event loop called ``name`` (see EVENT_LOOP).

    uvloop's loop and transports are written in C: measured with 64-byte
    messages, they save about a fifth of the CPU time of a fan-out delivery
    and a tenth of an echo, for a few milliseconds more at startup.
    """
    if name == "uvloop":
        import uvloop  # imported only when used: there is none on Windows

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def raise_open_files_limit() -> int:
    """Raise the soft limit on open files to the hard limit; return it.

    Each connection holds a file descriptor, and a common soft limit of 1024
    would cap the process at about a thousand clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    unlimited = soft == resource.RLIM_INFINITY
    logger.info("open files limit: %s", "unlimited" if unlimited else soft)
    return soft


async def wait_for_signal(signals: tuple[signal.Signals, ...]) -> signal.Signals:
    """Return the first of ``signals`` received; ignore any that follow.

    Heroku may send SIGTERM more than once, and a worker gets both the
    platform's signal and its parent's copy: later ones must not interrupt
    the shutdown under way, even after the event loop is gone.
    """
    loop = asyncio.get_running_loop()
    received: asyncio.Future[signal.Signals] = loop.create_future()

    def on_signal(signum: signal.Signals) -> None:
        if received.done():  # two signals landed in the same loop turn
            return
        # Block them again first: remove_signal_handler() restores the
        # default action, which would let a second signal kill us before
        # SIG_IGN. Other threads block them since __main__ (or workers.py).
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        for ignored in signals:
            loop.remove_signal_handler(ignored)
            signal.signal(ignored, signal.SIG_IGN)
        received.set_result(signum)

    for signum in signals:
        loop.add_signal_handler(signum, on_signal, signum)
    # The process starts with these signals blocked (see __main__.py), so
    # that one arriving during startup waits for the handlers instead of
    # killing us.
    signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
    return await received
