"""Loki shipping: tail the local archive and push every record exactly once
(after Loki's dedup). See docs/loki.md for labels and delivery semantics."""

from .config import LokiSettings, read_secret
from .pusher import LokiPusher

__all__ = ["LokiPusher", "LokiSettings", "read_secret"]
