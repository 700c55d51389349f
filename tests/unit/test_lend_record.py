"""Lend records: <spool>/<node>/<job_id>.json, written and revoked atomically."""
import errno
import json
import os
import stat
import threading
import time

import pytest

from spank_plugin.core import Lend, lend_record_path, revoke_lend_record, write_lend_record

LEND = Lend(slurm_cpus=(6, 7), os_cpus=(1, 1), mem_mb=4096)


def _write(spool, job_id=123, node="n1", **kw):
    args = dict(uid=1000, gid=100, end_time=1732800600, spec_text="cores=2,mem=4G", lend=LEND, until_min=5)
    args.update(kw)
    return write_lend_record(spool, job_id, node, **args)


def test_write_exact_document(tmp_path):
    before = int(time.time())
    path = _write(tmp_path)
    after = int(time.time())
    assert path == tmp_path / "n1" / "123.json" == lend_record_path(tmp_path, "n1", 123)
    text = path.read_text()
    assert text.endswith("}\n") and text.count("\n") == 1  # one line
    doc = json.loads(text)
    assert list(doc) == ["version", "state", "job_id", "node", "uid", "gid", "slurm_cpus", "os_cpus",
                         "mem_mb", "end_time", "until_min", "spec", "written_at"]
    # C's time() and Python's time.time() read different clocks (the kernel's coarse one and
    # the precise one), and a VM's clock can be stepped between the two reads: a second either way.
    assert before - 1 <= doc.pop("written_at") <= after + 1
    assert doc == {"version": 1, "state": "lent", "job_id": 123, "node": "n1", "uid": 1000, "gid": 100,
                   "slurm_cpus": [6, 7], "os_cpus": [1, 1], "mem_mb": 4096, "end_time": 1732800600,
                   "until_min": 5, "spec": "cores=2,mem=4G"}
    assert text.startswith('{"version":1,"state":"lent","job_id":123,"node":"n1","uid":1000,"gid":100,'
                           '"slurm_cpus":[6,7],"os_cpus":[1,1],"mem_mb":4096,"end_time":1732800600,'
                           '"until_min":5,"spec":"cores=2,mem=4G","written_at":')


def test_modes(tmp_path):
    old = os.umask(0o077)
    try:
        path = _write(tmp_path)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700  # <spool>/<node>: root's alone


def test_empty_lend_and_escaping(tmp_path):
    path = _write(tmp_path, node='we"ird\\né', spec_text='a"b\\c\x01\tz', lend=Lend(mem_mb=1))
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["node"] == 'we"ird\\né'
    assert doc["spec"] == 'a"b\\c\x01\tz'
    assert doc["slurm_cpus"] == [] and doc["os_cpus"] == []


def test_invalid_utf8_is_replaced(tmp_path):
    path = _write(tmp_path, spec_text="x\udcffy")  # surrogateescape of byte 0xff
    assert json.loads(path.read_text(encoding="utf-8"))["spec"] == "x\ufffdy"


def test_large_lend(tmp_path):
    n = 4096
    lend = Lend(tuple(range(n)), tuple(range(n)), 1)
    path = _write(tmp_path, lend=lend)
    assert json.loads(path.read_text())["slurm_cpus"] == list(range(n))
    assert revoke_lend_record(tmp_path, "n1", 123)
    doc = json.loads(path.read_text())
    assert doc["state"] == "revoked" and doc["os_cpus"] == list(range(n))


def test_revoke(tmp_path):
    path = _write(tmp_path)
    lent = json.loads(path.read_text())
    assert revoke_lend_record(tmp_path, "n1", 123) is True
    doc = json.loads(path.read_text())
    assert list(doc)[-1] == "revoked_at"
    revoked_at = doc.pop("revoked_at")
    assert abs(revoked_at - time.time()) < 5
    assert doc == dict(lent, state="revoked")
    # idempotent: nothing changes, the first revoked_at stays
    first = path.read_bytes()
    assert revoke_lend_record(tmp_path, "n1", 123) is True
    assert path.read_bytes() == first


def test_revoke_missing(tmp_path):
    assert revoke_lend_record(tmp_path, "n1", 1) is False  # no node dir
    (tmp_path / "n1").mkdir()
    assert revoke_lend_record(tmp_path, "n1", 1) is False  # no record
    assert revoke_lend_record(tmp_path / "nope", "n1", 1) is False  # no spool


def test_revoke_garbage(tmp_path):
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / "5.json").write_text('{"something":"else"}')
    with pytest.raises(OSError, match="not a version 1 lend record"):
        revoke_lend_record(tmp_path, "n1", 5)
    (tmp_path / "n1" / "6.json").write_text('{"version":1,"state":"lent",')
    with pytest.raises(OSError, match="truncated"):
        revoke_lend_record(tmp_path, "n1", 6)


def test_write_revoked_state(tmp_path):
    path = _write(tmp_path, state="revoked")
    doc = json.loads(path.read_text())
    assert doc["state"] == "revoked" and "revoked_at" in doc


def test_rewrite_replaces(tmp_path):
    _write(tmp_path)
    revoke_lend_record(tmp_path, "n1", 123)
    path = _write(tmp_path, lend=Lend(mem_mb=7))  # requeued job lends again
    doc = json.loads(path.read_text())
    assert doc["state"] == "lent" and doc["mem_mb"] == 7


def test_missing_spool_is_oserror(tmp_path):
    with pytest.raises(OSError) as info:
        _write(tmp_path / "absent")
    assert info.value.errno == errno.ENOENT
    assert "spool" in str(info.value) and str(tmp_path / "absent") in str(info.value)
    assert not (tmp_path / "absent").exists()  # the spool itself is never created


def test_spool_is_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(OSError):
        _write(tmp_path / "f")


def test_node_dir_is_a_file(tmp_path):
    (tmp_path / "n1").write_text("")
    with pytest.raises(OSError) as info:
        _write(tmp_path)
    assert info.value.errno == errno.ENOTDIR
    assert "n1" in str(info.value)


@pytest.mark.parametrize("node", ["", "a/b", "..", "../x", "x..y", ".", "a\nb", "x" * 300, "a\0b"])
def test_bad_node_names(tmp_path, node):
    with pytest.raises(OSError) as info:
        _write(tmp_path, node=node)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(OSError):
        revoke_lend_record(tmp_path, node, 123)
    assert list(tmp_path.iterdir()) == []


def test_node_dir_symlink_is_refused(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "n1").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError):
        _write(spool)
    assert list((tmp_path / "elsewhere").iterdir()) == []


def test_no_temp_files_left(tmp_path):
    for job in range(20):
        _write(tmp_path, job_id=job)
        revoke_lend_record(tmp_path, "n1", job)
    names = sorted(p.name for p in (tmp_path / "n1").iterdir())
    assert names == sorted(f"{j}.json" for j in range(20))


def test_concurrent_readers_never_see_partial_records(tmp_path):
    """Readers poll while writers rewrite: every read is a whole document."""
    big = Lend(tuple(range(3000)), tuple(range(3000)), 1)  # > one write() buffer
    _write(tmp_path, lend=big)
    path = lend_record_path(tmp_path, "n1", 123)
    stop = threading.Event()
    bad = []

    def reader():
        while not stop.is_set():
            try:
                json.loads(path.read_text())
            except ValueError as exc:
                bad.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(30):
            _write(tmp_path, lend=big)
            revoke_lend_record(tmp_path, "n1", 123)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert bad == []


def test_concurrent_writers_of_one_record(tmp_path):
    """Threads (cffi releases the GIL) rewrite one record: no clash, no leftovers."""
    errors = []

    def writer():
        try:
            for _ in range(50):
                _write(tmp_path)
                revoke_lend_record(tmp_path, "n1", 123)
        except OSError as exc:  # pragma: no cover - the failure being tested for
            errors.append(exc)

    threads = [threading.Thread(target=writer) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert [p.name for p in (tmp_path / "n1").iterdir()] == ["123.json"]
    json.loads((tmp_path / "n1" / "123.json").read_text())


# --- job_prolog -> extern step hand-over; reading back; create-only -------------------

from spank_plugin.core import Pending, peek_lend_record, read_pending, remove_pending, write_pending  # noqa: E402


def test_pending_round_trip(tmp_path):
    assert read_pending(tmp_path, "n1", 3) is None
    write_pending(tmp_path, "n1", 3, Pending(True, 32, "cores=4,mem=1G"))
    assert (tmp_path / "n1" / ".3.pending").exists()  # a dot file: agents skip it
    assert read_pending(tmp_path, "n1", 3) == Pending(True, 32, "cores=4,mem=1G")
    write_pending(tmp_path, "n1", 3, Pending(False, 0, ""))
    assert read_pending(tmp_path, "n1", 3) == Pending(False, 0, "")
    assert remove_pending(tmp_path, "n1", 3) is True
    assert remove_pending(tmp_path, "n1", 3) is False
    assert remove_pending(tmp_path / "nope", "n1", 3) is False


@pytest.mark.parametrize("text", ["", "faas-pending 1 given=2 tasks=1 spec=", "faas-pending 1 given=1 tasks=x spec=",
                                  "faas-pending 2 given=1 tasks=1 spec=", "faas-pending 1 given=1 tasks=1 spec=a b"])
def test_pending_garbage(tmp_path, text):
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / ".3.pending").write_text(text)
    with pytest.raises(OSError):
        read_pending(tmp_path, "n1", 3)


def test_pending_refuses_blanks(tmp_path):
    with pytest.raises(OSError):
        write_pending(tmp_path, "n1", 3, Pending(True, 1, "cores=1\nx"))


def test_peek(tmp_path):
    assert peek_lend_record(tmp_path, "n1", 9) is None
    write_lend_record(tmp_path, 9, "n1", 0, 0, 0, "", Lend(tuple(range(100, 1100)), tuple(range(1000)), 5))
    assert peek_lend_record(tmp_path, "n1", 9) == (1000, True)
    revoke_lend_record(tmp_path, "n1", 9)
    assert peek_lend_record(tmp_path, "n1", 9) == (1000, False)
    (tmp_path / "n1" / "9.json").write_text('{"version":2}')
    with pytest.raises(OSError):
        peek_lend_record(tmp_path, "n1", 9)
