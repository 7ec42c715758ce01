"""(to be written) Live seat counts: a per-process watcher publishes changes over pub/sub."""

from __future__ import annotations
