"""Client.wait_many against the co-scheduler's loop in process (tests/unit/daemon_harness.py,
SQLite and PostgreSQL): the pushes (SUBSCRIBE, ENDED) say what ended, each row is read
once, and a wait whose pushes are lost (a restarted co-scheduler forgot them) still ends by
subscribing again."""
from __future__ import annotations

import json

from faas_runtime import queue_client as client_mod

from .daemon_harness import client, harness_factory  # noqa: F401  (fixtures)


def _count_listed(c) -> list[int]:
    """The ids the client's LIST requests ask about, from now on."""
    asked: list[int] = []
    real_list = c.list

    def counting(**kw):
        asked.extend(kw.get("ids") or [])
        return real_list(**kw)

    c.list = counting
    return asked


def test_wait_many_reads_each_row_once_as_the_pushes_tell_what_ended(client):
    client.harness.agent()
    ids = client.invoke_batch("echo", [json.dumps(i) for i in range(250)])
    asked = _count_listed(client)
    steps: list[int] = []
    rows = client.wait_many(ids, timeout_s=60, window=100, progress=steps.append)
    assert set(rows) == set(ids) and {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    assert sorted(asked) == sorted(ids)  # each row read once, none polled again
    assert sum(steps) == len(ids)


def test_wait_many_ends_when_every_push_is_lost(client, monkeypatch):
    monkeypatch.setattr(client_mod, "RESUBSCRIBE_S", 0.3)
    client.take_pushed = lambda timeout_s=0.0: []  # as if every ENDED went to a dropped connection
    client.harness.agent()
    ids = client.invoke_batch("echo", ["1"] * 30)
    rows = client.wait_many(ids, timeout_s=60)
    assert {r["state"] for r in rows.values()} == {"SUCCEEDED"} and len(rows) == 30


def test_wait_many_of_a_batch_subscribed_as_queued_sends_no_subscribe(client):
    from faas_runtime import protocol as P

    client.harness.agent()
    sent: list[str] = []
    real_request = client.request

    def counting(kind, *args, **kw):
        sent.append(kind)
        return real_request(kind, *args, **kw)

    client.request = counting
    ids = client.invoke_batch("echo", [json.dumps(i) for i in range(120)], subscribe=True)
    rows = client.wait_many(ids, timeout_s=60, subscribed=True)
    assert set(rows) == set(ids) and {r["state"] for r in rows.values()} == {"SUCCEEDED"}
    assert P.SUBSCRIBE not in sent  # the pushes come from the INVOKE_BATCH's subscription


def test_wait_many_for_states_reads_back_only_what_did_not_succeed(client):
    ids = client.invoke_batch("echo", [json.dumps(i) for i in range(80)], subscribe=True)
    assert client.cancel(ids[5]) == "CANCELLED"  # still queued: no agent yet
    client.harness.agent()
    asked = _count_listed(client)
    steps: list[int] = []
    rows = client.wait_many(ids, timeout_s=60, subscribed=True, progress=steps.append, read_succeeded=False)
    assert asked == [ids[5]]  # the SUCCEEDED ones are known from their pushes
    assert rows[ids[5]]["state"] == "CANCELLED" and rows[ids[5]]["function"] == "echo"
    assert all(rows[i] == {"invocation_id": i, "state": "SUCCEEDED"} for i in ids if i != ids[5])
    assert sum(steps) == len(ids)
