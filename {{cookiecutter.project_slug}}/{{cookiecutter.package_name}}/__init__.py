"""A WebSocket service built on the websockets library; see README.md."""

__version__ = "0.1.0"
