"""Retention: finished invocations older than their state's age (config ``[retention]``)
are deleted with their history, in chunks, so the database stays the size of the live
queue plus a window and the loop never stalls on a large delete.

One step (``step_retention``) deletes at most ``CHUNK`` invocations per loop turn; while
a chunk comes back full it runs again next turn, else it rests ``EVERY_S``. Only terminal
states are ever named (config.py checks), so nothing queued or running is touched.

May not touch: anything but finished invocations and their events.
"""
from __future__ import annotations

import datetime as dt
import logging
import time

from sqlalchemy import delete, select

from . import db as D
from .hub import Hub

log = logging.getLogger("faas.coscheduler")

CHUNK = 1_000  # invocations deleted per loop turn (a few ms on SQLite)
EVERY_S = 60.0  # a pass when the last one found nothing more to delete


class Retention:
    def __init__(self, hub: Hub):
        self.hub = hub
        self._next = 0.0
        self.deleted = 0  # since start (for logs and tests)

    def step_retention(self) -> None:
        ages = self.hub.config.retention_s
        mono = time.monotonic()
        if not ages or mono < self._next:
            return
        with self.hub.database.session() as s:
            n = delete_expired(s, ages, D.utcnow(), CHUNK)
        self.deleted += n
        if n:
            log.info("retention: deleted %d finished invocations", n)
        self._next = mono if n >= CHUNK else mono + EVERY_S


def delete_expired(s, ages: dict[str, float], now: dt.datetime, limit: int) -> int:
    """Delete at most ``limit`` invocations that ended in a state of ``ages`` longer ago
    than its age, with their events; how many."""
    ids: list[int] = []
    for state, age_s in sorted(ages.items()):
        cutoff = now - dt.timedelta(seconds=age_s)
        ids += s.scalars(select(D.Invocation.id).where(D.Invocation.state == state, D.Invocation.updated_at < cutoff)
                         .limit(limit - len(ids))).all()
        if len(ids) >= limit:
            break
    if ids:
        s.execute(delete(D.InvocationEvent).where(D.InvocationEvent.invocation_id.in_(ids)))
        s.execute(delete(D.Invocation).where(D.Invocation.id.in_(ids)))
    return len(ids)
