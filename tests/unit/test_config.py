"""coscheduler.config: defaults < TOML file < environment < command line; clear errors."""
import pytest

from coscheduler.config import ConfigError, load

FILE = """
db_url = "sqlite:////tmp/x.db"
log_level = "debug"
reconcile_s = 2.5
[quotas]
max_queued = 100
max_running = 4
[quotas.users.1001]
max_queued = 7
[shares]
1002 = 2
"""


def test_file_env_and_options_in_order(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(FILE)
    cfg = load(path, env={})
    assert cfg.db_url == "sqlite:////tmp/x.db" and cfg.reconcile_s == 2.5 and cfg.log_level == "debug"
    assert cfg.quota(1001).max_queued == 7 and cfg.quota(1001).max_running == 4
    assert cfg.quota(5).max_queued == 100 and cfg.shares == {1002: 2.0}
    cfg = load(path, env={"FAAS_DB_URL": "sqlite:////tmp/env.db", "FAAS_QUOTA_MAX_QUEUED": "5"})
    assert cfg.db_url == "sqlite:////tmp/env.db" and cfg.max_queued == 5
    cfg = load(path, env={"FAAS_DB_URL": "sqlite:////tmp/env.db"}, overrides={"db_url": "sqlite:///cli.db",
                                                                                "bind": None})
    assert cfg.db_url == "sqlite:///cli.db" and cfg.bind == "tcp://127.0.0.1:7800"


def test_config_file_from_environment(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('db_url = "sqlite:///a.db"\n')
    assert load(env={"FAAS_CONFIG": str(path)}).db_url == "sqlite:///a.db"


@pytest.mark.parametrize("text,message", [
    ('db_url = "x"\nbogus = 1\n', "unknown key 'bogus'"),
    ('db_url = "x"\nreconcile_s = -1\n', "reconcile_s must be a positive number"),
    ('db_url = "x"\n[quotas]\nmax_queued = "lots"\n', "max_queued must be a whole number"),
    ('db_url = "x"\n[quotas.users.bob]\nmax_queued = 1\n', "'bob' is not a numeric uid"),
    ('db_url = "x"\nslurm_backend = "rest"\n', "slurm_backend must be one of"),
    ('db_url = "x\n', "not valid TOML"),
    ('log_level = "INFO"\n', "no database"),
])
def test_bad_configuration_is_named(tmp_path, text, message):
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load(path, env={})


def test_bad_environment_value_is_named():
    with pytest.raises(ConfigError, match="FAAS_TICK_S: tick_s must be a positive number"):
        load(env={"FAAS_DB_URL": "sqlite://", "FAAS_TICK_S": "fast"})


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the configuration file"):
        load(tmp_path / "nope.toml", env={})
