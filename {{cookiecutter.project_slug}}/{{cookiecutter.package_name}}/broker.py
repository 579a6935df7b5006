"""Fan-out of room messages to every process that has members of the room.

With one process, every member of a room is here, and delivering a message
is a local broadcast: that is :class:`Broker`. With several processes (two
dynos, two Fly machines, or workers on one machine), each holds some members
of each room, so every message must go through a broker they share: see
``redis_broker.py``, when the project was generated with Redis.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

__all__ = ["Broker", "Deliver"]

logger = logging.getLogger(__name__)

#: Called with (topic, message) for each message published to any topic.
Deliver = Callable[[str, str], None]


class Broker:
    """Deliver each published message to this process's subscribers only."""

    #: What /healthz reports: "local" means rooms end at this process.
    status = "local"

    def __init__(self) -> None:
        self._subscribers: list[Deliver] = []

    def subscribe(self, deliver: Deliver) -> None:
        """Call ``deliver(topic, message)`` for every message published."""
        self._subscribers.append(deliver)

    async def publish(self, topic: str, message: str) -> None:
        """Deliver ``message`` to every subscriber of ``topic``."""
        self.deliver_locally(topic, message)

    def deliver_locally(self, topic: str, message: str) -> None:
        for deliver in self._subscribers:
            deliver(topic, message)

    async def run(self) -> None:
        """Keep the broker connected until cancelled; nothing to do here."""
{%- if cookiecutter.use_redis %}
        logger.info("rooms are process-local (set REDIS_URL to share them)")
{%- else %}
        logger.info("rooms are process-local: one process serves them all")
{%- endif %}

    async def close(self) -> None:
        """Release connections; nothing to release here."""
