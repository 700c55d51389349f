"""The co-scheduler's database: models, sessions, and the data functions the daemon uses.

SQLite (a file) is the embedded default, PostgreSQL the production choice; both through
SQLAlchemy 2. Data functions take a ``Session`` and never commit: the caller (one daemon
loop step, one request) owns the transaction (``Database.session()``).

One module per concern; this package re-exports their public names, and callers use
them from here (``from coscheduler import db as D``; ``D.Invocation``, ``D.transition_many``):

- ``models``: the ORM models, ``UTCDateTime``, the table of legal state transitions;
- ``database``: ``Database`` (engine, sessions, the Alembic migrations), ``make_private``;
- ``queue``: the writes: add, claim, cancel, evict, ``transition``/``transition_many``;
- ``queries``: the reads;
- ``bulk``: the per-backend bulk statements ``queue`` and ``queries`` build on.
"""
from __future__ import annotations

# SQLAlchemy's select and func, reached as D.select and D.func by tests and bench/.
from sqlalchemy import func, select

from .bulk import IN_CHUNK
from .database import MIGRATIONS, Database, alembic_config, make_private
from .models import NAMING, Base, Function, Invocation, InvocationEvent, Slot, StateTransition, UTCDateTime, utcnow
from .queries import (
    ACTIVE_STATES,
    active_slots,
    count_by_state,
    dumps,
    function_named,
    functions_by_id,
    on_slot,
    payloads,
    queued,
    slot_usage,
    states_of,
    user_counts,
)
from .queue import (
    RELEASED,
    Change,
    ReportRow,
    StaleState,
    add_invocation,
    add_invocations,
    after_eviction,
    cancel,
    claim_queued,
    claim_queued_rows,
    evict,
    eviction_changes,
    release_from_slot,
    report_rows,
    repoint,
    transition,
    transition_many,
)

__all__ = [
    "ACTIVE_STATES", "IN_CHUNK", "MIGRATIONS", "NAMING", "RELEASED",
    "Base", "Change", "Database", "Function", "Invocation", "InvocationEvent", "ReportRow", "Slot",
    "StaleState", "StateTransition", "UTCDateTime",
    "active_slots", "add_invocation", "add_invocations", "after_eviction", "alembic_config", "cancel",
    "claim_queued", "claim_queued_rows", "count_by_state", "dumps", "evict", "eviction_changes", "func",
    "function_named", "functions_by_id", "make_private", "on_slot", "payloads", "queued",
    "release_from_slot", "report_rows", "repoint", "select", "slot_usage", "states_of", "transition", "transition_many",
    "user_counts", "utcnow",
]
