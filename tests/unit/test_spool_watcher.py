"""faas_runtime.spool: inotify watcher of a node's lend records (and its polling fallback)."""
import os
import select

import pytest

from faas_runtime.spool import SpoolWatcher, inotify_available
from tests.conftest import missing
from spank_plugin.core import Lend, revoke_lend_record, write_lend_record

LEND = Lend((6, 7), (1, 1), 1024)


def _write(spool, job, node="n1"):
    return write_lend_record(spool, job, node, 0, 0, 0, "cores=2", LEND)


@pytest.fixture
def inotify():
    if not inotify_available():
        missing("inotify is not available (Linux only)")


def _jobs(watcher):
    return sorted((r["job_id"], r["state"]) for _p, r in watcher.changes())


@pytest.mark.parametrize("inotify", [True, False])
def test_first_call_reads_everything_then_only_changes(tmp_path, inotify):
    _write(tmp_path, 1)
    _write(tmp_path, 2)
    with SpoolWatcher(tmp_path / "n1", use_inotify=inotify, rescan_s=0 if not inotify else 60) as w:
        assert _jobs(w) == [(1, "lent"), (2, "lent")]  # a restarted agent rebuilds its view
        assert _jobs(w) == []
        revoke_lend_record(tmp_path, "n1", 2)
        _write(tmp_path, 3)
        assert _jobs(w) == [(2, "revoked"), (3, "lent")]
        assert _jobs(w) == []


@pytest.mark.usefixtures("inotify")
def test_inotify_wakes_a_poller_at_once(tmp_path):
    _write(tmp_path, 1)
    with SpoolWatcher(tmp_path / "n1", rescan_s=60) as w:
        assert w.uses_inotify
        list(w.changes())
        assert select.select([w.fileno()], [], [], 0)[0] == []
        revoke_lend_record(tmp_path, "n1", 1)
        assert select.select([w.fileno()], [], [], 5)[0] == [w.fileno()]
        assert _jobs(w) == [(1, "revoked")]
        assert select.select([w.fileno()], [], [], 0)[0] == []  # drained


@pytest.mark.usefixtures("inotify")
def test_node_dir_created_later_and_recreated(tmp_path):
    with SpoolWatcher(tmp_path / "n1", rescan_s=60) as w:
        assert _jobs(w) == []  # neither exists yet
        _write(tmp_path, 5)  # the plugin creates n1/ and the record
        assert select.select([w.fileno()], [], [], 5)[0]
        assert _jobs(w) == [(5, "lent")]
        for f in (tmp_path / "n1").iterdir():
            f.unlink()
        (tmp_path / "n1").rmdir()
        _write(tmp_path, 6)
        assert select.select([w.fileno()], [], [], 5)[0]
        assert _jobs(w) == [(6, "lent")]
        revoke_lend_record(tmp_path, "n1", 6)
        assert select.select([w.fileno()], [], [], 5)[0]
        assert _jobs(w) == [(6, "revoked")]


def test_ignores_temp_files_other_nodes_and_garbage(tmp_path):
    (tmp_path / "n1").mkdir()
    (tmp_path / "n1" / ".7.json.123.tmp").write_text("{")
    (tmp_path / "n1" / ".7.pending").write_text("faas-pending 1 given=1 tasks=1 spec=\n")
    (tmp_path / "n1" / "8.json").write_text("not json")
    _write(tmp_path, 9, node="n2")
    with SpoolWatcher(tmp_path / "n1") as w:
        assert _jobs(w) == []
        (tmp_path / "n1" / "8.json").unlink()
        _write(tmp_path, 8)
        assert _jobs(w) == [(8, "lent")]


def test_missing_spool_is_not_an_error(tmp_path):
    with SpoolWatcher(tmp_path / "nope" / "n1") as w:
        assert _jobs(w) == []


def test_rescan_backstop_catches_what_inotify_missed(tmp_path):
    _write(tmp_path, 1)
    w = SpoolWatcher(tmp_path / "n1", use_inotify=False, rescan_s=0)
    assert w.fileno() is None
    assert _jobs(w) == [(1, "lent")]
    path = tmp_path / "n1" / "1.json"
    text = path.read_text().replace('"lent"', '"revoked"')
    tmp = tmp_path / "n1" / ".x"
    tmp.write_text(text)
    os.replace(tmp, path)  # new inode: seen as a change even within one mtime tick
    assert _jobs(w) == [(1, "revoked")]
