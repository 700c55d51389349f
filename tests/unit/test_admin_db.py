"""faas-admin db current / upgrade on SQLite and a real PostgreSQL."""
import pytest
from click.testing import CliRunner
from sqlalchemy import text

from coscheduler.cli.admin import main
from coscheduler.db import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'faas.db'}"
    url = request.getfixturevalue("postgres_url")
    db = Database(url)
    with db.engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    db.dispose()
    return url


def test_current_and_upgrade(empty_url, monkeypatch):
    monkeypatch.delenv("FAAS_CONFIG", raising=False)
    head = Database.head_revision()
    run = CliRunner().invoke
    r = run(main, ["db", "--db", empty_url, "current"])
    assert r.exit_code == 1 and f"revision none (no schema), newest {head}" in r.output
    assert "faas-admin db upgrade" in r.output
    r = run(main, ["db", "--db", empty_url, "upgrade"])
    assert r.exit_code == 0 and f"empty -> {head}" in r.output
    r = run(main, ["db", "--db", empty_url, "current"])
    assert r.exit_code == 0 and f"revision {head}, newest {head}" in r.output
    r = run(main, ["db", "--db", empty_url, "upgrade"])
    assert r.exit_code == 0 and "(already the newest)" in r.output
    db = Database(empty_url)
    assert db.revision() == head
    db.dispose()


def test_database_from_the_config_file_and_errors_in_one_line(tmp_path, monkeypatch):
    monkeypatch.delenv("FAAS_DB_URL", raising=False)
    conf = tmp_path / "coscheduler.toml"
    conf.write_text(f'db_url = "sqlite:///{tmp_path / "q.db"}"\n')
    r = CliRunner().invoke(main, ["db", "--config", str(conf), "upgrade"])
    assert r.exit_code == 0 and "q.db" in r.output
    r = CliRunner().invoke(main, ["db", "--config", str(tmp_path / "nope.toml"), "current"])
    assert r.exit_code == 1 and "cannot read the configuration file" in r.output
    r = CliRunner().invoke(main, ["db", "--db", "postgresql+psycopg://u:secret@127.0.0.1:9/x", "current"])
    assert r.exit_code == 1 and r.output.startswith("Error: cannot read") and "secret" not in r.output


def test_options_after_the_subcommand(tmp_path, monkeypatch):
    """``db current --config F`` as the docs show it, and the same with --db."""
    monkeypatch.delenv("FAAS_DB_URL", raising=False)
    monkeypatch.delenv("FAAS_CONFIG", raising=False)
    conf = tmp_path / "coscheduler.toml"
    conf.write_text(f'db_url = "sqlite:///{tmp_path / "q.db"}"\n')
    r = CliRunner().invoke(main, ["db", "upgrade", "--config", str(conf)])
    assert r.exit_code == 0 and "q.db" in r.output, r.output
    r = CliRunner().invoke(main, ["db", "current", "--config", str(conf)])
    assert r.exit_code == 0 and f"revision {Database.head_revision()}" in r.output
    r = CliRunner().invoke(main, ["db", "current", "--db", f"sqlite:///{tmp_path / 'other.db'}"])
    assert r.exit_code == 1 and "other.db" in r.output
