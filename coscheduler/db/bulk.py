"""The statements behind the bulk data functions, one form per backend.

Owns how many rows go in few round trips: on PostgreSQL one statement over ``unnest`` of
arrays (one statement text whatever the count, which psycopg prepares once), on SQLite
(in-process) executemany and ``IN`` lists of at most ``IN_CHUNK`` ids. ``queue`` and
``queries`` build on these; nothing here checks a state change (``queue`` does) or commits.

May not decide anything: queue.py says what changes, this says how, per backend.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Iterator, Optional

from sqlalchemy import (
    JSON,
    Integer,
    String,
    Text,
    any_,
    bindparam,
    cast,
    column,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session

from .models import Invocation, InvocationEvent


def is_postgresql(s: Session) -> bool:
    return s.get_bind().dialect.name == "postgresql"


IN_CHUNK = 5000  # ids per IN (...) list: under SQLite's limit of bound parameters


def chunks(ids: Iterable[int]) -> Iterator[list[int]]:
    ids = list(ids)
    for start in range(0, len(ids), IN_CHUNK):
        yield ids[start:start + IN_CHUNK]


def id_filters(s: Session, col, ids: Iterable[int]) -> Iterator:
    """Conditions that together select ``col`` in ``ids``: on PostgreSQL one ``= ANY(:ids)``
    (one statement text whatever the count, which psycopg prepares once; and an index probe
    per id), on SQLite ``IN`` lists of at most ``IN_CHUNK``; none for no ids."""
    ids = list(ids)
    if not ids:
        return
    if is_postgresql(s):
        yield col == any_(bindparam("ids", ids, type_=ARRAY(Integer())))
        return
    for chunk in chunks(ids):
        yield col.in_(chunk)


@dataclass
class RowWrite:
    """One row change of ``transition_many``: the state it starts from, the columns it sets."""

    id: int
    from_state: str
    values: dict[str, Any]


def write_rows(s: Session, cols: tuple[str, ...], rows: list[RowWrite]) -> int:
    """executemany ``UPDATE ... WHERE id = :id AND state = :from``; the rows written."""
    table = Invocation.__table__
    stmt = (update(table)
            .where(table.c.id == bindparam("p_id"), table.c.state == bindparam("p_from"))
            .values({col: bindparam(f"p_{col}", type_=table.c[col].type) for col in cols}))
    params = [{"p_id": r.id, "p_from": r.from_state, **{f"p_{col}": r.values[col] for col in cols}} for r in rows]
    return s.execute(stmt, params).rowcount


def write_rows_postgresql(s: Session, cols: tuple[str, ...], rows: list[RowWrite]) -> int:
    """One ``UPDATE invocations ... FROM unnest(:ids, :froms, :values...) AS v`` for the rows;
    the rows written."""
    stmt, json_cols = _unnest_update(cols)
    params: dict[str, Any] = {"a_id": [r.id for r in rows], "a_from_state": [r.from_state for r in rows]}
    for col in cols:
        values = [r.values[col] for r in rows]
        params[f"a_{col}"] = [_json_text(v, json_cols[col]) for v in values] if col in json_cols else values
    return s.execute(stmt, params).rowcount


def _json_text(value: Any, json_type: JSON) -> Optional[str]:
    return None if value is None and json_type.none_as_null else json.dumps(value)


@lru_cache(maxsize=64)
def _unnest_update(cols: tuple[str, ...]):
    """The statement of ``write_rows_postgresql`` for these columns, and its JSON columns
    (they travel as text arrays and are cast back to JSON).

    The from-state comes from the arrays too, so that it is a join condition, and the
    only index that finds a row of ``v`` is the primary key: a constant state could be
    looked up by an index on state, which stale statistics (a queue that filled since the
    last ANALYZE) make look as cheap, and which reads every row in that state per row
    written (0.15 ms a row at 5,000 queued; psycopg's prepared statements keep such a
    generic plan for the connection's life)."""
    table = Invocation.__table__
    json_cols = {col: table.c[col].type for col in cols if isinstance(table.c[col].type, JSON)}
    spec = [column("id", Integer()), column("from_state", String())]
    spec += [column(col, Text() if col in json_cols else table.c[col].type) for col in cols]
    v = (func.unnest(*[bindparam(f"a_{c.name}", type_=ARRAY(c.type)) for c in spec])
         .table_valued(*spec).render_derived(name="v"))
    stmt = (update(table)
            .where(table.c.id == v.c.id, table.c.state == v.c.from_state)
            .values({col: cast(v.c[col], json_cols[col]) if col in json_cols else v.c[col] for col in cols}))
    return stmt, json_cols


def add_events(s: Session, events: list[dict[str, Any]]) -> None:
    """Record state changes (dicts of invocation_id, from_state, to_state, at, reason), in
    the order given: one statement on PostgreSQL, executemany on SQLite."""
    if not events:
        return
    if not is_postgresql(s):
        s.execute(insert(InvocationEvent.__table__), events)
        return
    s.execute(_unnest_events(), {f"e_{col}": [e[col] for e in events] for col in EVENT_COLUMNS})


EVENT_COLUMNS = ("invocation_id", "from_state", "to_state", "at", "reason")


@lru_cache(maxsize=1)
def _unnest_events():
    table = InvocationEvent.__table__
    spec = [column(col, table.c[col].type) for col in EVENT_COLUMNS]
    e = (func.unnest(*[bindparam(f"e_{c.name}", type_=ARRAY(c.type)) for c in spec])
         .table_valued(*spec).render_derived(name="e"))
    # unnest yields the rows in array order, and the ids are drawn in that order.
    return insert(table).from_select(list(EVENT_COLUMNS), select(*e.c))


@lru_cache(maxsize=1)
def unnest_submit():
    """``add_invocations`` on PostgreSQL: ``INSERT ... SELECT FROM unnest(:payloads) WITH
    ORDINALITY ORDER BY ordinality RETURNING id``, one statement text for any number (the
    multi-row VALUES of executemany is a new text, parsed anew, for every batch size). The
    ids are drawn in the order of the payloads, so the sorted ids are theirs in order (as
    SQLAlchemy's own "insertmanyvalues" sorts them)."""
    table = Invocation.__table__
    u = (func.unnest(bindparam("payloads", type_=ARRAY(Text()))).table_valued("payload", with_ordinality="n")
         .render_derived(name="u"))
    consts = {col: bindparam(col, type_=table.c[col].type)
              for col in ("function_id", "owner_uid", "state", "priority", "mem_mb")}
    now = bindparam("now", type_=table.c.created_at.type)
    src = (select(consts["function_id"], consts["owner_uid"], u.c.payload, consts["state"], consts["priority"],
                  literal(0, Integer()), consts["mem_mb"], now, now)
           .select_from(u).order_by(u.c.n))
    return (insert(table)
            .from_select(["function_id", "owner_uid", "payload", "state", "priority", "attempts", "mem_mb",
                          "created_at", "updated_at"], src)
            .returning(table.c.id))
