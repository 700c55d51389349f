"""The statements behind the bulk data functions, one form per backend.

Owns how many rows go in few round trips: on PostgreSQL one statement over ``unnest`` of
arrays (one statement text whatever the count, which psycopg prepares once), on SQLite
(in-process) executemany and ``IN`` lists of at most ``IN_CHUNK`` ids. ``queue`` and
``queries`` build on these; nothing here checks a state change (``queue`` does) or commits.

May not decide anything: queue.py says what changes, this says how, per backend.
"""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Iterable, Iterator, Optional

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

from .models import Invocation, InvocationEvent, UTCDateTime, as_utc


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


def unprepared(s: Session, sql: str, params: Any) -> list[tuple]:
    """Rows of ``sql`` (PostgreSQL, psycopg placeholders, ``params`` a tuple or a dict), in
    the session's transaction, planned for these values each time: never prepared. psycopg
    prepares a statement at its sixth run, and PostgreSQL then keeps one generic plan for
    the connection; the queue grows faster than its statistics follow, and a plan made while
    the table was small read all of it for each lookup by ids (7-10 ms a statement at
    5,000 invocations instead of a tenth of a millisecond: half the server's time)."""
    cur = s.connection().connection.dbapi_connection.cursor()
    try:
        cur.execute(sql, params, prepare=False)
        return cur.fetchall()
    finally:
        cur.close()


def unprepared_by_ids(s: Session, sql: str, ids: Iterable[int]) -> list[tuple]:
    """``unprepared`` with ``sql``'s one ``%s`` the list ``ids``; no round trip for none."""
    ids = list(ids)
    return unprepared(s, sql, (ids,)) if ids else []


@dataclass
class RowWrite:
    """One row change of ``transition_many``: the state it starts from, the columns it sets."""

    id: int
    from_state: str
    values: dict[str, Any]


def write_rows(s: Session, cols: tuple[str, ...], rows: list[RowWrite]) -> int:
    """executemany ``UPDATE ... WHERE id = ? AND state = ?``; the rows written (SQLite).

    The statement goes to the driver as it is, with the values already in the form SQLite
    stores (``sqlite_values``): SQLAlchemy's per-row parameter handling (a dict, a type
    processor per value) cost more than SQLite's own work on the row."""
    convert = sqlite_values(cols)
    sql = _sqlite_update(cols)
    params = [(*convert([r.values[col] for col in cols]), r.id, r.from_state) for r in rows]
    return s.connection().exec_driver_sql(sql, params).rowcount


@lru_cache(maxsize=64)
def _sqlite_update(cols: tuple[str, ...]) -> str:
    sets = ", ".join(f"{col} = ?" for col in cols)
    return f"UPDATE {Invocation.__tablename__} SET {sets} WHERE id = ? AND state = ?"


def sqlite_time(value: Optional[dt.datetime]) -> Optional[str]:
    """A UTC-aware datetime as SQLAlchemy stores it in SQLite (``UTCDateTime``: UTC, no
    zone; the DATETIME storage format, which compares as text in time order)."""
    if value is None:
        return None
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S.%f")


@lru_cache(maxsize=64)
def sqlite_values(cols: tuple[str, ...]) -> Callable[[list], list]:
    """A function that turns a list of the values of ``cols`` (invocations' columns) into
    the values SQLite stores, in place, as SQLAlchemy's types would: times as
    ``sqlite_time`` (each distinct time formatted once: a batch shares a few), JSON as text
    (None as NULL where the column says so), the rest as they are."""
    table = Invocation.__table__
    steps: list[tuple[int, Callable[[Any], Any]]] = []  # (index, conversion) of the columns that need one
    for i, col in enumerate(cols):
        kind = table.c[col].type
        if isinstance(kind, UTCDateTime):
            steps.append((i, _time_memo))
        elif isinstance(kind, JSON):
            steps.append((i, _json_or_null if kind.none_as_null else json.dumps))

    def convert(values: list) -> list:
        for i, conversion in steps:
            values[i] = conversion(values[i])
        return values

    return convert


def _json_or_null(value: Any) -> Optional[str]:
    return None if value is None else json.dumps(value)


_TIMES: dict[dt.datetime, str] = {}  # a batch's few distinct times, formatted once (cleared when large)


def _time_memo(value: Optional[dt.datetime]) -> Optional[str]:
    """``sqlite_time``, remembered: aware datetimes that compare equal are one instant,
    hence one UTC text; a naive one never equals an aware one, and raises."""
    if value is None:
        return None
    text = _TIMES.get(value)
    if text is None:
        if len(_TIMES) > 4096:
            _TIMES.clear()
        text = _TIMES[value] = sqlite_time(value)
    return text


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
    the order given: one statement on PostgreSQL, executemany on SQLite (values as SQLite
    stores them, straight to the driver: see ``write_rows``)."""
    if not events:
        return
    if not is_postgresql(s):
        s.connection().exec_driver_sql(_SQLITE_EVENTS, [
            (e["invocation_id"], e["from_state"], e["to_state"], _time_memo(e["at"]), e["reason"]) for e in events])
        return
    s.execute(_unnest_events(), {f"e_{col}": [e[col] for e in events] for col in EVENT_COLUMNS})


_SQLITE_EVENTS = (f"INSERT INTO {InvocationEvent.__tablename__} (invocation_id, from_state, to_state, at, reason) "
                  "VALUES (?, ?, ?, ?, ?)")


SUBMIT_COLUMNS = ("function_id", "owner_uid", "payload", "state", "priority", "attempts", "mem_mb", "created_at",
                  "updated_at")
SUBMIT_CHUNK = 500  # rows per INSERT on SQLite: 4,500 bound values, under its limit of 32,766


def submit_sqlite(s: Session, payloads: list[str], **fixed: Any) -> list[int]:
    """``add_invocations`` on SQLite: multi-row ``INSERT ... VALUES ... RETURNING id``,
    SUBMIT_CHUNK rows a statement, values straight to the driver (see ``write_rows``);
    ``fixed``: the other SUBMIT_COLUMNS, the same for every row. The ids in the order of
    the payloads: a statement draws its rows' ids in the order of its VALUES, so sorted."""
    fixed = {**fixed, "created_at": _time_memo(fixed["created_at"]), "updated_at": _time_memo(fixed["updated_at"])}
    before = [fixed[c] for c in SUBMIT_COLUMNS[:SUBMIT_COLUMNS.index("payload")]]
    after = [fixed[c] for c in SUBMIT_COLUMNS[SUBMIT_COLUMNS.index("payload") + 1:]]
    conn = s.connection()
    ids: list[int] = []
    for start in range(0, len(payloads), SUBMIT_CHUNK):
        part = payloads[start:start + SUBMIT_CHUNK]
        params: list[Any] = []
        for payload in part:
            params += before
            params.append(payload)
            params += after
        ids += sorted(conn.exec_driver_sql(_sqlite_submit(len(part)), tuple(params)).scalars())
    return ids


@lru_cache(maxsize=8)
def _sqlite_submit(rows: int) -> str:
    one = "(" + ", ".join("?" * len(SUBMIT_COLUMNS)) + ")"
    return (f"INSERT INTO {Invocation.__tablename__} ({', '.join(SUBMIT_COLUMNS)}) VALUES "
            + ", ".join([one] * rows) + " RETURNING id")


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
