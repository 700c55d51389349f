"""The co-scheduler's configuration: defaults < TOML file < environment < command line.

Example (``/etc/slurm-faas/coscheduler.toml``; every key is optional)::

    db_url = "postgresql+psycopg://faas@dbhost/faas"
    bind = "tcp://0.0.0.0:7800"
    log_file = "/var/log/slurm-faas/coscheduler.log"
    log_level = "INFO"
    slurm_backend = "auto"        # cli (squeue/sinfo --json, scontrol -o) | pyslurm | auto
    reconcile_s = 5.0
    max_payload_bytes = 1048576
    dispatch_ahead_s = 0.1        # seconds of a short function's work waiting per lent core
    dispatch_ahead_max = 32       # invocations waiting per lent core (0: no dispatch-ahead)
    agent_uids = [0]              # whose munge credential may open an agent session (root)
    agent_grace_s = 60.0          # an agent silent this long loses its work to the queue
    max_request_bytes = 16777216  # the largest request frame (larger: the peer is disconnected)
    check_code = true             # register checks, as the user, that the code can be read
    ha = false                    # high availability: several co-schedulers on one PostgreSQL, one active
    max_function_cores = 32       # register refuses functions no lend could ever hold (absent: no bound)
    max_function_mem_mb = 65536

    [retention]                   # days a finished invocation is kept (absent: forever), by end state
    succeeded = 7
    failed = 30
    timed_out = 30
    cancelled = 7

    [quotas]
    max_queued = 100000           # per user: queued + dispatched + running
    max_running = 1000            # per user: on slots at once
    [quotas.users.1001]           # overrides for uid 1001
    max_queued = 10
    [shares]                      # fair-share weights by uid (default 1)
    1002 = 2.0

Each top-level key can be overridden by an environment variable: ``FAAS_`` + the key in
capitals (``FAAS_DB_URL``, ``FAAS_LOG_LEVEL``, ``FAAS_QUOTA_MAX_QUEUED`` ...); ``bind`` is
``FAAS_COSCHEDULER_BIND`` and the munge socket ``FAAS_MUNGE_SOCKET``, as the CLIs use.
An unknown key or a bad value is an error that names it.

Owns: the co-scheduler's configuration. May not touch: sockets, the database.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional

from faas_runtime.states import TERMINAL

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_FILE = Path("/etc/slurm-faas/coscheduler.toml")


class ConfigError(Exception):
    """A configuration file or variable that cannot be used; the message says which."""


@dataclass(frozen=True)
class UserQuota:
    max_queued: Optional[int] = None
    max_running: Optional[int] = None


@dataclass
class Config:
    db_url: str = ""
    bind: str = "tcp://127.0.0.1:7800"
    munge_socket: Optional[str] = None
    log_file: Optional[str] = None
    log_level: str = "INFO"
    slurm_backend: str = "auto"
    tick_s: float = 0.05
    reconcile_s: float = 5.0
    dispatch_grace_s: float = 5.0
    # An agent silent this long is declared dead and its work requeued: long enough that an
    # agent stalled for seconds (a busy node, a stopped process) does not have its work run twice.
    agent_grace_s: float = 60.0
    agent_uids: frozenset[int] = frozenset({0})  # whose munge credential opens an agent session
    max_payload_bytes: int = 1 << 20
    max_request_bytes: int = 16 << 20  # ZMQ_MAXMSGSIZE of the co-scheduler's socket
    # Invocations in one batch request: each request is one transaction of the loop, and
    # 1,000 inserts take about 50 ms here (bench/bench_trust.py), within the loop's 100 ms.
    max_batch: int = 1_000
    max_user_priority: int = 10  # priority classes above this are root's (operators' urgent work)
    check_code: bool = True  # register checks, as the user, that the code directory can be read
    # High availability (coscheduler/leader.py): this co-scheduler is one of several on one
    # PostgreSQL database; it serves only while it holds the leadership, else stands by.
    ha: bool = False
    metrics_bind: Optional[str] = None  # host:port of the Prometheus endpoint (None: off)
    queue_window: int = 5_000  # queued invocations claimed per scheduling tick
    user_window: int = 1_000  # of which at most this many per (priority, user)
    # Dispatch-ahead: invocations of short functions wait at the agent behind the one
    # running on a lent core, so the core does not idle for a round trip: as many as fit
    # in dispatch_ahead_s seconds of the function's recent mean run time, at most
    # dispatch_ahead_max (0: never). Another user's invocation waits behind at most that.
    dispatch_ahead_s: float = 0.1
    dispatch_ahead_max: int = 32
    max_queued: Optional[int] = 100_000  # per user: queued + dispatched + running
    max_running: Optional[int] = None  # per user: on slots at once
    user_quotas: dict[int, UserQuota] = field(default_factory=dict)
    shares: dict[int, float] = field(default_factory=dict)
    # What no lend of this site can hold (None: no bound); register refuses more.
    max_function_cores: Optional[int] = None
    max_function_mem_mb: Optional[int] = None
    # End state (SUCCEEDED ...) -> seconds its invocations are kept; absent: forever.
    retention_s: dict[str, float] = field(default_factory=dict)

    def quota(self, uid: int) -> UserQuota:
        own = self.user_quotas.get(uid, UserQuota())
        return UserQuota(own.max_queued if own.max_queued is not None else self.max_queued,
                         own.max_running if own.max_running is not None else self.max_running)


ENV = {
    "db_url": "FAAS_DB_URL", "bind": "FAAS_COSCHEDULER_BIND", "munge_socket": "FAAS_MUNGE_SOCKET",
    "log_file": "FAAS_LOG_FILE", "log_level": "FAAS_LOG_LEVEL", "slurm_backend": "FAAS_SLURM_BACKEND",
    "tick_s": "FAAS_TICK_S", "reconcile_s": "FAAS_RECONCILE_S", "dispatch_grace_s": "FAAS_DISPATCH_GRACE_S",
    "max_payload_bytes": "FAAS_MAX_PAYLOAD_BYTES", "max_batch": "FAAS_MAX_BATCH",
    "queue_window": "FAAS_QUEUE_WINDOW", "user_window": "FAAS_USER_WINDOW",
    "dispatch_ahead_s": "FAAS_DISPATCH_AHEAD_S", "dispatch_ahead_max": "FAAS_DISPATCH_AHEAD_MAX",
    "max_queued": "FAAS_QUOTA_MAX_QUEUED", "max_running": "FAAS_QUOTA_MAX_RUNNING",
    "agent_grace_s": "FAAS_AGENT_GRACE_S", "max_request_bytes": "FAAS_MAX_REQUEST_BYTES",
    "max_user_priority": "FAAS_MAX_USER_PRIORITY", "metrics_bind": "FAAS_METRICS_BIND", "max_function_cores": "FAAS_MAX_FUNCTION_CORES",
    "max_function_mem_mb": "FAAS_MAX_FUNCTION_MEM_MB",
}
_SCALARS = {f.name: f for f in dataclasses.fields(Config) if f.name in ENV}
BACKENDS = ("auto", "cli", "pyslurm")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


_INTS = {"max_payload_bytes", "max_batch", "queue_window", "user_window", "max_request_bytes",
         "max_function_cores", "max_function_mem_mb"}
_COUNTS = {"max_queued", "max_running", "dispatch_ahead_max", "max_user_priority"}  # 0 is valid (a quota of nothing; never)
_FLOATS = {"tick_s", "reconcile_s", "dispatch_grace_s", "dispatch_ahead_s", "agent_grace_s"}


def _coerce(name: str, value: Any, where: str) -> Any:
    try:
        if name in _INTS or name in _COUNTS:
            if isinstance(value, bool) or isinstance(value, float):
                raise ValueError
            out: Any = int(value)
            if out < (0 if name in _COUNTS else 1):
                raise ValueError
            return out
        if name in _FLOATS:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not out > 0:
                raise ValueError
            return out
    except (TypeError, ValueError):
        kind = "a whole number >= 0" if name in _COUNTS else "a positive number"
        raise ConfigError(f"{where}: {name} must be {kind}, not {value!r}") from None
    if not isinstance(value, str):
        raise ConfigError(f"{where}: {name} must be a string, not {value!r}")
    return value


def _uid(key: str, where: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise ConfigError(f"{where}: {key!r} is not a numeric uid") from None


def load(path: Optional[Path] = None, env: Optional[Mapping[str, str]] = None,
         overrides: Optional[Mapping[str, Any]] = None) -> Config:
    """Read ``path`` (or ``$FAAS_CONFIG``, or the default file if it exists), then the
    environment, then ``overrides`` (command-line options that were given)."""
    env = os.environ if env is None else env
    cfg = Config()
    if path is None and env.get("FAAS_CONFIG"):
        path = Path(env["FAAS_CONFIG"])
    if path is None and DEFAULT_FILE.exists():
        path = DEFAULT_FILE
    if path is not None:
        try:
            doc = tomllib.loads(Path(path).read_text())
        except OSError as exc:
            raise ConfigError(f"cannot read the configuration file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
        _apply_file(cfg, doc, str(path))
    for name, var in ENV.items():
        if env.get(var):
            setattr(cfg, name, _coerce(name, env[var], f"environment variable {var}"))
    for name, value in (overrides or {}).items():
        if value is not None and name != "ha":  # a flag: below
            setattr(cfg, name, _coerce(name, value, f"option --{name.replace('_', '-')}"))
    if cfg.slurm_backend not in BACKENDS:
        raise ConfigError(f"slurm_backend must be one of {', '.join(BACKENDS)}, not {cfg.slurm_backend!r}")
    if cfg.log_level.upper() not in LEVELS:
        raise ConfigError(f"log_level must be one of {', '.join(LEVELS)}, not {cfg.log_level!r}")
    if not cfg.db_url:
        raise ConfigError("no database: set db_url in the configuration file, FAAS_DB_URL, or --db")
    if env.get("FAAS_HA"):
        cfg.ha = _flag(env["FAAS_HA"], "environment variable FAAS_HA")
    if (overrides or {}).get("ha") is not None:
        cfg.ha = bool(overrides["ha"])
    if cfg.ha and not cfg.db_url.startswith("postgresql"):
        raise ConfigError("ha = true needs PostgreSQL (db_url = \"postgresql+psycopg://...\"): the co-schedulers "
                          f"elect the active one in the database they share, and {cfg.db_url.split(':')[0]} is one "
                          "host's file; run one co-scheduler, or move the queue to PostgreSQL")
    return cfg


def _flag(value: str, where: str) -> bool:
    if value.strip().lower() in ("1", "true", "yes", "on"):
        return True
    if value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{where} must be true or false (1/0, yes/no), not {value!r}")


def _apply_file(cfg: Config, doc: dict, where: str) -> None:
    for key, value in doc.items():
        if key in _SCALARS:
            setattr(cfg, key, _coerce(key, value, where))
        elif key == "agent_uids":
            if not isinstance(value, list) or not value or \
                    not all(isinstance(u, int) and not isinstance(u, bool) and u >= 0 for u in value):
                raise ConfigError(f"{where}: agent_uids must be a non-empty list of uids")
            cfg.agent_uids = frozenset(value)
        elif key in ("check_code", "ha"):
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: {key} must be true or false")
            setattr(cfg, key, value)
        elif key == "quotas" and isinstance(value, dict):
            for qk, qv in value.items():
                if qk in ("max_queued", "max_running"):
                    setattr(cfg, qk, _coerce(qk, qv, f"{where} [quotas]"))
                elif qk == "users" and isinstance(qv, dict):
                    for uid, limits in qv.items():
                        if not isinstance(limits, dict) or set(limits) - {"max_queued", "max_running"}:
                            raise ConfigError(f"{where} [quotas.users.{uid}]: only max_queued and max_running")
                        cfg.user_quotas[_uid(uid, where)] = UserQuota(
                            **{k: _coerce(k, v, f"{where} [quotas.users.{uid}]") for k, v in limits.items()})
                else:
                    raise ConfigError(f"{where} [quotas]: unknown key {qk!r}")
        elif key == "retention" and isinstance(value, dict):
            cfg.retention_s = _retention(value, f"{where} [retention]")
        elif key == "shares" and isinstance(value, dict):
            for uid, weight in value.items():
                if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight <= 0:
                    raise ConfigError(f"{where} [shares]: the share of {uid} must be a positive number")
                cfg.shares[_uid(uid, where)] = float(weight)
        else:
            raise ConfigError(f"{where}: unknown key {key!r}")


def _retention(table: dict, where: str) -> dict[str, float]:
    """[retention]: end state (lower case) -> days kept; as seconds by state name."""
    out = {}
    names = {st.value.lower(): st.value for st in TERMINAL}
    for key, days in table.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown state {key!r} (one of {', '.join(sorted(names))})")
        if isinstance(days, bool) or not isinstance(days, (int, float)) or not days > 0:
            raise ConfigError(f"{where}: {key} must be a positive number of days, not {days!r}")
        out[names[key]] = float(days) * 86400
    return out
