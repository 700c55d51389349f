"""Which database a dev cluster's co-scheduler uses (no cluster is started here)."""
import json

from coscheduler.tools.devcluster import DevCluster


def test_default_is_sqlite_in_the_cluster_dir(tmp_path):
    assert DevCluster(tmp_path).db_url == f"sqlite:///{tmp_path.resolve() / 'faas.db'}"


def test_a_running_cluster_keeps_the_database_it_was_started_with(tmp_path):
    url = "postgresql+psycopg://faas@/faas?host=/tmp/pg"
    assert DevCluster(tmp_path, db_url=url).db_url == url
    (tmp_path / "cluster.json").write_text(json.dumps({"ports": {}, "nodes": [], "db_url": url}))
    # `up` of the same directory without --db (e.g. to restart a dead daemon) uses it too
    assert DevCluster(tmp_path).db_url == url
