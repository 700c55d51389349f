"""High availability pieces without a cluster: leader election and fencing on a real
PostgreSQL (coscheduler/leader.py), the standby's answer, and clients following the
active co-scheduler among several addresses (faas_runtime/failover.py)."""
import threading
import time

import pytest
import zmq
from sqlalchemy import text

from coscheduler.config import Config, ConfigError, load
from coscheduler.db import Database
from coscheduler.leader import Leadership, LeadershipLost, stand_by
from faas_runtime import protocol as P
from faas_runtime.failover import BadAddress, addresses
from faas_runtime.queue_client import Client, RequestError
from coscheduler.tools.devcluster_procs import free_port


def test_addresses_parse_lists_and_refuse_junk():
    assert addresses("tcp://a:1, tcp://b:2") == ["tcp://a:1", "tcp://b:2"]
    assert addresses(["tcp://a:1,tcp://b:2", "tcp://c:3", "tcp://a:1"]) == ["tcp://a:1", "tcp://b:2", "tcp://c:3"]
    for bad in ("", " , ", "head:7800"):
        with pytest.raises(BadAddress):
            addresses(bad)


def test_ha_needs_postgresql(tmp_path):
    conf = tmp_path / "c.toml"
    conf.write_text(f'db_url = "sqlite:///{tmp_path}/q.db"\nha = true\n')
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        load(conf, env={})
    with pytest.raises(ConfigError, match="needs PostgreSQL"):
        load(None, env={"FAAS_DB_URL": f"sqlite:///{tmp_path}/q.db", "FAAS_HA": "yes"})
    with pytest.raises(ConfigError, match="FAAS_HA must be true or false"):
        load(None, env={"FAAS_DB_URL": "postgresql+psycopg://x/y", "FAAS_HA": "maybe"})
    conf.write_text('db_url = "postgresql+psycopg://x/y"\nha = "yes"\n')
    with pytest.raises(ConfigError, match="ha must be true or false"):
        load(conf, env={})
    assert load(None, env={"FAAS_DB_URL": "postgresql+psycopg://x/y"}, overrides={"ha": True}).ha


def _eventually(check, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def _silence(leadership: Leadership) -> None:
    """The holder stops using its lock connection, as a stopped process would."""
    leadership._stop.set()
    leadership._watcher.join()


def _partition(leadership: Leadership) -> None:
    """The holder's lock connection is cut off and it does not notice (a partition)."""
    _silence(leadership)
    leadership._drop()


@pytest.fixture
def pg(postgres_url):
    """Two Database objects (two co-schedulers) on one fresh PostgreSQL schema."""
    first = Database(postgres_url)
    with first.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    second = Database(postgres_url)
    yield first, second
    first.dispose()
    second.dispose()


def test_one_active_and_the_old_one_is_fenced(pg):
    db_a, db_b = pg
    a, b = Leadership(db_a, holder="a"), Leadership(db_b, holder="b")
    try:
        assert a.try_acquire()
        assert not b.try_acquire()  # one lock, one active co-scheduler
        db_a.create_schema()
        epoch = a.take_over()
        with db_a.session() as s:  # the fence lets the active one's transactions through
            assert s.execute(text("SELECT holder FROM coscheduler_leader")).scalar() == "a"
        _partition(a)  # the lock goes with its connection, once the server sees it
        assert _eventually(b.try_acquire)
        assert b.take_over() == epoch + 1
        with pytest.raises(LeadershipLost, match="another co-scheduler became active"):
            with db_a.session() as s:  # a's other connections still work, but nothing commits
                s.execute(text("UPDATE coscheduler_leader SET holder = 'a' WHERE id = 1"))
        with db_b.session() as s:
            assert s.execute(text("SELECT holder FROM coscheduler_leader")).scalar() == "b"
        a._check_lock()  # what a's watcher finds when it looks again
        with pytest.raises(LeadershipLost, match="cannot take it back"):
            a.step_watch()
    finally:
        a.close()
        b.close()


def test_the_active_one_takes_its_lock_back_after_a_lost_connection(pg):
    db_a, _ = pg
    a = Leadership(db_a, holder="a")
    try:
        assert a.try_acquire()
        db_a.create_schema()
        a.take_over()
        holder = text("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted")
        with db_a.engine.connect() as other:
            pid = other.execute(holder).scalar()
            # The lock connection breaks; nobody else took the lock meanwhile: a's watcher takes it back.
            other.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})
            assert _eventually(lambda: (other.execute(holder).scalar(), other.rollback())[0] not in (None, pid))
        a.step_watch()
        assert a.lost is None
        with db_a.session() as s:
            s.execute(text("SELECT 1"))
    finally:
        a.close()


def test_standby_answers_standby_until_it_holds_the_lock(pg):
    db_a, db_b = pg
    active = Leadership(db_a, holder="a")
    assert active.try_acquire()
    bind = f"tcp://127.0.0.1:{free_port()}"
    standby = Leadership(db_b, holder="b")
    stop, led = threading.Event(), []
    thread = threading.Thread(target=lambda: led.append(stand_by(Config(db_url="x", bind=bind), standby, stop.is_set)))
    thread.start()
    try:
        with Client(bind, timeout_s=10) as client:
            with pytest.raises(RequestError) as err:
                client.request(P.PING, authenticated=False)
            assert err.value.code == P.E_STANDBY
        active.close()  # the active one ends: the standby takes the lock within its poll
        thread.join(timeout=10)
        assert led == [True]
    finally:
        stop.set()
        thread.join(timeout=10)
        active.close()
        standby.close()


def _serve(bind: str, code, stop: threading.Event) -> threading.Thread:
    """A stand-in co-scheduler: ERROR ``code`` to every request, or OK when code is None."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.ROUTER)
    sock.bind(bind)

    def loop():
        while not stop.is_set():
            if sock.poll(50):
                ident, frame = sock.recv_multipart()
                rid = P.decode(frame).get("rid")
                reply = P.encode(P.OK, rid=rid, served_by=bind) if code is None else \
                    P.encode(P.ERROR, rid=rid, code=code, message="standby")
                sock.send_multipart([ident, reply])
        sock.close(linger=0)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def test_client_follows_the_active_one_past_a_standby_and_a_dead_address():
    stop = threading.Event()
    standby, active, dead = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    threads = [_serve(standby, P.E_STANDBY, stop), _serve(active, None, stop)]
    try:
        with Client(f"{dead},{standby},{active}", timeout_s=20) as client:
            assert client.request(P.PING, authenticated=False)["served_by"] == active
            assert client.request(P.PING, authenticated=False)["served_by"] == active  # and stays there
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=5)


def test_agent_takes_addresses_repeated_comma_separated_or_from_its_toml(tmp_path):
    import click
    from click.testing import CliRunner

    from faas_runtime.agent_config import load_config
    from faas_runtime.failover import joined

    assert joined(None, None, ("tcp://a:1,tcp://b:2", "tcp://c:3")) == "tcp://a:1,tcp://b:2,tcp://c:3"
    with pytest.raises(click.BadParameter, match="not a ZeroMQ address"):
        joined(None, None, ("head:7800",))

    @click.command()
    @click.option("--config", type=click.Path(path_type=__import__("pathlib").Path), is_eager=True,
                  expose_value=False, callback=load_config)
    @click.option("--coscheduler", "endpoint", multiple=True, required=True, callback=joined)
    def show(endpoint):
        click.echo(endpoint)

    for value in ('"tcp://a:1,tcp://b:2"', '["tcp://a:1", "tcp://b:2"]'):
        (tmp_path / "agent.toml").write_text(f"coscheduler = {value}\n")
        out = CliRunner().invoke(show, ["--config", str(tmp_path / "agent.toml")])
        assert out.output.strip() == "tcp://a:1,tcp://b:2", out.output


def test_a_new_active_one_waits_for_the_old_ones_transaction_in_flight(pg):
    """The fence's row lock orders the two: the takeover's epoch UPDATE waits until the old
    one's open transaction ends; that one commits as the active one's, every later one fails."""
    db_a, db_b = pg
    a, b = Leadership(db_a, holder="a"), Leadership(db_b, holder="b")
    try:
        assert a.try_acquire()
        db_a.create_schema()
        a.take_over()
        took_over = threading.Event()
        with db_a.session() as s:
            s.execute(text("SELECT 1"))  # the fence ran: this transaction holds the row FOR SHARE
            _partition(a)
            assert _eventually(b.try_acquire)
            thread = threading.Thread(target=lambda: (b.take_over(), took_over.set()))
            thread.start()
            waiting = text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                           "AND query LIKE 'UPDATE coscheduler_leader%'")
            with db_b.engine.connect() as other:  # b's UPDATE waits on a's row lock
                # (a new transaction each time: pg_stat_activity is read once per transaction)
                assert _eventually(lambda: (other.execute(waiting).scalar(), other.rollback())[0] == 1)
            assert not took_over.is_set()
        thread.join(timeout=30)
        assert took_over.is_set()
        with pytest.raises(LeadershipLost):
            with db_a.session() as s:
                s.execute(text("SELECT 1"))
    finally:
        a.close()
        b.close()


def test_a_stopped_holder_is_ended_and_fenced(pg, monkeypatch):
    """A holder that stops (SIGSTOP, a frozen VM) keeps its lock connection open but silent:
    after STALLED_S a standby ends every session of it, takes the lock and fences it."""
    import coscheduler.leader as leader

    monkeypatch.setattr(leader, "STALLED_S", 1.0)
    db_a, db_b = pg
    a, b = Leadership(db_a, holder="a"), Leadership(db_b, holder="b")
    try:
        assert a.try_acquire()
        db_a.create_schema()
        epoch = a.take_over()
        with db_a.session() as s:
            s.execute(text("SELECT 1"))  # a pooled connection of a's, with its name
        _silence(a)
        assert _eventually(b.try_acquire)
        assert b.take_over() == epoch + 1
        with pytest.raises(LeadershipLost):  # when a resumes, nothing of it commits
            with db_a.session() as s:
                s.execute(text("SELECT 1"))
    finally:
        a.close()
        b.close()
