"""The clients' room: what users ask of the co-scheduler, each request proven by munge.

A request's credential is decoded off the loop (identity.py); once it proves a uid, the
request is handled in one transaction and answered after the commit. Every field is
typed and bounded (fields.py), every user has a queue quota (``max_queued``, 100,000 by
default), and a bulk cancel is written in chunks over several loop turns, so no request
holds the loop for long; the invocations it covers are never dispatched meanwhile.

A user sees and changes only their own functions and invocations (root sees all). The
group a function runs with is never the user's to choose: the node takes it from its
user database. Register checks, as the user, that the code can be read (code_check.py).

May not touch: agent sessions (read only), placement, Slurm.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from faas_runtime import protocol as P
from faas_runtime.auth import AuthError, request_digest
from faas_runtime.containers import RUNTIME_NAMES
from faas_runtime.states import ALLOWED, ON_SLOT, TERMINAL, State

from . import code_check
from . import db as D
from . import fields as F
from .hub import Hub, RequestFailed
from .identity import CredentialChecks
from .observe import overview
from .readouts import Readouts
from .reasons import never_fits

log = logging.getLogger("faas.coscheduler")

CANCELLABLE = [st.value for st, then in ALLOWED.items() if State.CANCELLED in then]  # queued or on a slot
UNAUTHENTICATED = frozenset({P.PING, P.AGENTS})  # liveness: answered at once, no credential
CANCEL_CHUNK = 500  # invocations a bulk cancel writes per loop turn (about 20 ms: bench/bench_trust.py)


@dataclass
class BulkCancel:
    """A cancel of every unfinished invocation of a function, written CANCEL_CHUNK at a time."""

    identity: bytes
    rid: Any
    function_id: int
    upto_id: int  # invocations submitted later are not covered
    reason: str
    cancelled: int = 0


class ClientRoom:
    def __init__(self, hub: Hub, checks: CredentialChecks):
        self.hub = hub
        self.checks = checks
        # Other request kinds (leases.py): kind -> handler(transaction, uid, msg) -> reply fields.
        self.handlers: dict[str, Callable[[Session, int, dict], dict]] = {}
        # ... and those that need the connection (subscriptions.py): (transaction, connection, uid, msg).
        self.connection_handlers: dict[str, Callable[[Session, bytes, int, dict], dict]] = {}
        self.on_queued: Optional[Callable[[bytes, list[int]], None]] = None  # INVOKE_BATCH subscribe=true
        self.bulk: list[BulkCancel] = []
        self.readouts = Readouts(hub)
        self.check_code = hub.config.check_code and code_check.can_check()
        if hub.config.check_code and not self.check_code:
            log.warning("not root: register cannot check code directories as their users (the executor will)")

    def kinds(self) -> frozenset[str]:
        return P.CLIENT_TYPES | frozenset(self.handlers) | frozenset(self.connection_handlers)

    # -- arrival, credential, handling --------------------------------------------------------

    def receive(self, identity: bytes, kind: str, msg: dict) -> None:
        """A request off the wire: liveness answered now; the rest after its credential."""
        rid = msg.get("rid")
        if kind in UNAUTHENTICATED:
            self._answer(identity, rid, self._liveness(kind))
            return
        cred = msg.get("cred")
        if not isinstance(cred, str) or len(cred) > 4096:
            self.hub.send(identity, P.ERROR, rid=rid, code=P.E_AUTH, message="request carries no munge credential")
            return
        if not self.checks.submit((identity, kind, msg), cred, request_digest(msg)):
            self.hub.send(identity, P.ERROR, rid=rid, code=P.E_BUSY,
                          message="the co-scheduler is checking too many credentials; try again")

    def answer_checked(self, identity: bytes, kind: str, msg: dict, outcome: object) -> None:
        """A request whose credential check finished: refused, or handled as the uid it proved."""
        if isinstance(outcome, AuthError):
            self.hub.send(identity, P.ERROR, rid=msg.get("rid"), code=P.E_AUTH, message=str(outcome))
        elif isinstance(outcome, BaseException):
            log.error("credential check failed: %r", outcome)
            self.hub.send(identity, P.ERROR, rid=msg.get("rid"), code=P.E_INTERNAL,
                          message=f"credential check failed: {outcome}")
        else:
            self.handle(identity, kind, msg, int(outcome))

    def handle(self, identity: bytes, kind: str, msg: dict, uid: int) -> None:
        """One request of ``uid``, one transaction; the reply is queued after the commit."""
        rid = msg.get("rid")
        mark = len(self.hub.outbox)
        try:
            with self.hub.database.session() as s:
                reply = self._dispatch(s, identity, kind, msg, uid)
        except (P.ProtocolError, RequestFailed) as exc:
            del self.hub.outbox[mark:]
            log.info("refused a %s request of uid %d: %s: %s", kind, uid, exc.code, exc)
            self.hub.send(identity, P.ERROR, rid=rid, code=exc.code, message=str(exc))
        except Exception as exc:
            del self.hub.outbox[mark:]
            log.exception("internal error handling a %s request", kind)
            self.hub.send(identity, P.ERROR, rid=rid, code=P.E_INTERNAL, message=f"internal error: {exc}")
        else:
            if reply is not None:  # None: answered later (a bulk cancel)
                self._answer(identity, rid, reply)

    def _answer(self, identity: bytes, rid: Any, reply: dict) -> None:
        self.hub.send(identity, P.OK, rid=rid, **reply)

    def _liveness(self, kind: str) -> dict:
        if kind == P.PING:  # with what this co-scheduler offers clients (docs/python.md)
            return {"pong": True, "binary_results": self.hub.binary_results, "subscribe": self.on_queued is not None}
        now = time.monotonic()
        return {"agents": {n: round(now - a.last_seen, 3) for n, a in self.hub.sessions.items()}}

    def _dispatch(self, s: Session, identity: bytes, kind: str, msg: dict, uid: int) -> Optional[dict]:
        if kind in self.handlers:
            return self.handlers[kind](s, uid, msg)
        if kind in self.connection_handlers:
            return self.connection_handlers[kind](s, identity, uid, msg)
        if kind == P.REGISTER:
            return self._register(s, uid, msg)
        if kind == P.FUNCTION_UPDATE:
            return self._update_function(s, uid, msg)
        if kind == P.FUNCTIONS:
            q = select(D.Function).where(D.Function.owner_uid == uid, D.Function.deleted_at.is_(None))
            return {"functions": [_fn_row(fn) for fn in s.scalars(q.order_by(D.Function.name))]}
        if kind == P.FUNCTION_SHOW:
            fn = self._function(s, uid, msg.get("name"))
            counts = dict(s.execute(select(D.Invocation.state, func.count())
                                    .where(D.Invocation.function_id == fn.id).group_by(D.Invocation.state)).all())
            return {"function": {**_fn_row(fn), "invocations": counts}}
        if kind == P.FUNCTION_DELETE:
            return self._delete_function(s, uid, msg)
        if kind == P.INVOKE:
            payload = msg[P.PAYLOAD_BIN] if P.PAYLOAD_BIN in msg else msg.get("payload_json", "null")
            return {"invocation_id": self._invoke(s, uid, msg.get("function"), [payload], msg.get("priority", 0))[0]}
        if kind == P.INVOKE_BATCH:
            if "check_count" in msg:
                self._invoke(s, uid, msg.get("function"), [], msg.get("priority", 0), msg["check_count"])
                cfg = self.hub.config
                return {"max_payload_bytes": cfg.max_payload_bytes, "max_batch": cfg.max_batch,
                        "max_request_bytes": cfg.max_request_bytes, "binary_results": self.hub.binary_results,
                        "subscribe": self.on_queued is not None}
            payloads = msg.get("payloads")
            if not isinstance(payloads, list) or not payloads:
                raise F.invalid("a batch carries a non-empty list of payloads")
            ids = self._invoke(s, uid, msg.get("function"), payloads, msg.get("priority", 0))
            if msg.get("subscribe") is True and self.on_queued is not None:
                self.on_queued(identity, ids)
            return {"invocation_ids": ids}
        if kind == P.STATUS:
            return self.readouts.status(s, uid, msg)
        if kind == P.RESULT_GET:
            return self.readouts.result(s, uid, msg)
        if kind == P.RESULTS:
            return self.readouts.results(s, uid, msg)
        if kind == P.OUTPUT_GET:
            return self.readouts.output(s, uid, msg)
        if kind == P.CANCEL_INVOCATION:
            return self._cancel(s, self._owned(s, uid, msg))
        if kind == P.CANCEL_FUNCTION:
            return self._cancel_function(s, identity, msg.get("rid"), self._function(s, uid, msg.get("function")))
        if kind == P.LIST:
            fn = self._function(s, uid, msg["function"]) if msg.get("function") else None
            return self.readouts.listing(s, uid, msg, fn)
        if kind in (P.STATS, P.OVERVIEW):
            if uid != 0:
                raise RequestFailed(P.E_AUTH, "the co-scheduler's statistics are root's")
            return self.hub.metrics.snapshot() if kind == P.STATS else overview(self.hub, s)
        if kind == P.SLOTS:
            return {"slots": [_slot_row(sl) for sl in s.scalars(select(D.Slot).order_by(D.Slot.lent_at))]}
        raise P.ProtocolError(P.E_UNKNOWN_TYPE, kind)

    # -- functions ---------------------------------------------------------------------------

    def _function(self, s: Session, uid: int, name: Any) -> D.Function:
        fn = D.function_named(s, uid, name) if isinstance(name, str) and len(name) <= 128 else None
        if fn is None:
            raise RequestFailed(P.E_NOT_FOUND, f"no function named {str(name)[:128]!r} (register it first)")
        return fn

    def _apply_function_fields(self, fn: D.Function, spec: dict) -> None:
        """Set the fields ``spec`` names, each checked and bounded; then the whole function."""
        if "gid" in spec or "owner_gid" in spec:
            raise F.invalid("a function runs with the groups the user database gives its owner; "
                            "a gid cannot be chosen")
        unknown = set(spec) - set(FUNCTION_FIELDS) - {"name", "create_only"}
        if unknown:
            raise F.invalid(f"unknown function field {sorted(unknown)[0]!r}")
        for key, read in FUNCTION_FIELDS.items():
            if key in spec and (spec[key] is not None or key in ("image", "runtime")):
                setattr(fn, key, None if spec[key] is None else read(spec[key]))
        if not fn.entrypoint:
            raise F.invalid("a function needs an entrypoint (module:function or path/lib.so:symbol)")
        if not fn.code_dir:
            raise F.invalid("a function needs a code directory")
        problem = never_fits(fn, self.hub.config.max_function_cores, self.hub.config.max_function_mem_mb)
        if problem is not None:
            raise F.invalid(f"no node of this site could ever run it: {problem}")
        if self.check_code:
            problem = code_check.code_problem(fn.owner_uid, fn.code_dir, fn.entrypoint)
            if problem is not None:
                raise F.invalid(problem)
        fn.updated_at = D.utcnow()

    def _register(self, s: Session, uid: int, msg: dict) -> dict:
        spec = msg.get("function")
        if not isinstance(spec, dict) or not spec.get("entrypoint"):
            raise F.invalid("register needs a function with a name and an entrypoint")
        name = F.text(spec.get("name"), "function name", 100, F.NAME_RE)
        fn = D.function_named(s, uid, name)
        if fn is None:
            # owner_gid is informational: nodes take the group from their user database.
            fn = D.Function(name=name, owner_uid=uid, owner_gid=_primary_gid(uid), cores=1, mem_mb=256,
                            timeout_s=60.0, max_attempts=3, entrypoint="", code_dir="")
            s.add(fn)
        elif spec.get("create_only"):
            raise RequestFailed(P.E_EXISTS, f"function {name!r} exists; use update")
        self._apply_function_fields(fn, {**{"image": None, "runtime": None}, **spec})
        s.flush()
        return {"function_id": fn.id}

    def _update_function(self, s: Session, uid: int, msg: dict) -> dict:
        fn = self._function(s, uid, msg.get("name"))
        changes = msg.get("function")
        if not isinstance(changes, dict) or not changes:
            raise F.invalid("update needs at least one field to change")
        self._apply_function_fields(fn, changes)
        s.flush()
        return {"function": _fn_row(fn)}

    def _delete_function(self, s: Session, uid: int, msg: dict) -> dict:
        fn = self._function(s, uid, msg.get("name"))
        active = list(s.scalars(select(D.Invocation).where(D.Invocation.function_id == fn.id,
                                                            D.Invocation.state.in_(D.ACTIVE_STATES))
                                .limit(CANCEL_CHUNK + 1)))
        if active and not msg.get("force"):
            many = f"more than {CANCEL_CHUNK}" if len(active) > CANCEL_CHUNK else str(len(active))
            raise F.invalid(f"function {fn.name!r} has {many} queued or running invocations; cancel them or "
                            "delete with --force")
        if len(active) > CANCEL_CHUNK:
            raise F.invalid(f"function {fn.name!r} has more than {CANCEL_CHUNK} unfinished invocations: "
                            "cancel them first (submit-function cancel --function)")
        for inv in active:
            self._cancel(s, inv, f"function {fn.name} deleted")
        name = fn.name
        # The row stays for the history of its invocations, under a name no one can register.
        fn.deleted_at = D.utcnow()
        fn.name = f"{name}#deleted-{fn.id}"
        return {"deleted": name, "cancelled": len(active)}

    # -- invocations -------------------------------------------------------------------------

    def _invoke(self, s: Session, uid: int, name: Any, payloads: list, priority: Any,
                check_count: Any = None) -> list[int]:
        """Queue ``payloads`` (all or none); with ``check_count``, only check that that many
        would be accepted (function, priority, quota) and write nothing."""
        cfg = self.hub.config
        fn = self._function(s, uid, name)
        if len(payloads) > cfg.max_batch:
            raise RequestFailed(P.E_TOO_LARGE, f"a batch holds at most {cfg.max_batch} invocations, "
                                               f"not {len(payloads)}")
        ceiling = F.MAX_PRIORITY if uid == 0 else cfg.max_user_priority
        priority = F.whole(priority, "priority", F.MIN_PRIORITY, F.MAX_PRIORITY)
        if priority > ceiling:
            raise F.invalid(f"priority {priority} is above {ceiling}, the highest class users may ask for "
                            "(root may ask for more)")
        many = len(payloads) > 1
        for n, payload in enumerate(payloads):
            where = f"invocation {n + 1} of the batch: " if many else ""
            if isinstance(payload, bytes):  # binary: opaque bytes, never decoded here
                if len(payload) > cfg.max_payload_bytes:
                    raise RequestFailed(P.E_TOO_LARGE, f"{where}payload is {len(payload)} bytes; at most "
                                                       f"{cfg.max_payload_bytes} (max_payload_bytes)")
                continue
            if not isinstance(payload, str) or len(payload.encode()) > cfg.max_payload_bytes:
                raise RequestFailed(P.E_TOO_LARGE if isinstance(payload, str) else P.E_INVALID,
                                    f"{where}payload must be JSON text or bytes of at most {cfg.max_payload_bytes} "
                                    "bytes")
            try:
                json.loads(payload)
            except ValueError as exc:
                raise F.invalid(f"{where}payload is not JSON: {exc}") from None
        adding = len(payloads) if check_count is None else F.whole(check_count, "check_count", 0, F.INT64_MAX)
        quota = cfg.quota(uid)
        if quota.max_queued is not None:
            active = sum(D.user_counts(s, uid).values())
            if active + adding > quota.max_queued:
                raise RequestFailed(P.E_QUOTA, f"quota exceeded: uid {uid} may have at most {quota.max_queued} "
                                               f"queued or running invocations; {active} are, and this request "
                                               f"adds {adding}")
        if check_count is not None:
            return []
        ids = D.add_invocations(s, fn, payloads, uid, priority)
        self.hub.mark_dirty()
        return ids

    def _owned(self, s: Session, uid: int, msg: dict) -> D.Invocation:
        return self.readouts.owned(s, uid, msg.get("invocation_id"))

    def _cancel(self, s: Session, inv: D.Invocation, reason: str = "cancelled by its owner") -> dict:
        if State(inv.state) in TERMINAL:
            raise F.invalid(f"invocation {inv.id} already ended {inv.state}")
        node, attempt = inv.node, inv.attempts
        if D.cancel(s, inv, reason):
            self._stop_on_agent(node, inv.id, attempt, reason)
        return {"invocation_id": inv.id, "state": inv.state}

    def _cancel_function(self, s: Session, identity: bytes, rid: Any, fn: D.Function,
                         reason: str = "cancelled by its owner") -> Optional[dict]:
        """Every unfinished invocation of ``fn``: written CANCEL_CHUNK per loop turn
        (``step_bulk``), answered when done; none of them is dispatched meanwhile."""
        upto = s.scalar(select(func.max(D.Invocation.id)).where(D.Invocation.function_id == fn.id)) or 0
        job = BulkCancel(identity, rid, fn.id, upto, reason)
        self.hub.cancelling[fn.id] = max(upto, self.hub.cancelling.get(fn.id, 0))
        self.bulk.append(job)
        return None

    def step_bulk(self) -> None:
        """One chunk of each bulk cancel under way; the request is answered when it is done."""
        for job in list(self.bulk):
            try:
                with self.hub.database.session() as s:
                    if not self._cancel_chunk(s, job):
                        continue  # more next turn
                self._answer(job.identity, job.rid, {"cancelled": job.cancelled})
            except Exception as exc:
                log.exception("bulk cancel of function %d failed", job.function_id)
                self.hub.send(job.identity, P.ERROR, rid=job.rid, code=P.E_INTERNAL, message=f"internal error: {exc}")
            self.bulk.remove(job)
            if not any(j.function_id == job.function_id for j in self.bulk):
                self.hub.cancelling.pop(job.function_id, None)

    def _cancel_chunk(self, s: Session, job: BulkCancel) -> bool:
        rows = s.execute(select(D.Invocation.id, D.Invocation.state, D.Invocation.node, D.Invocation.attempts)
                         .where(D.Invocation.function_id == job.function_id, D.Invocation.id <= job.upto_id,
                                D.Invocation.state.in_(CANCELLABLE))
                         .limit(CANCEL_CHUNK)).all()
        at = D.utcnow()
        D.transition_many(s, [D.Change(r.id, State(r.state), State.CANCELLED, at, job.reason) for r in rows])
        for r in rows:
            if State(r.state) in ON_SLOT:
                self._stop_on_agent(r.node, r.id, r.attempts, job.reason)
        job.cancelled += len(rows)
        self.hub.mark_dirty()
        return len(rows) < CANCEL_CHUNK

    def _stop_on_agent(self, node: Optional[str], inv_id: int, attempt: int, reason: str) -> None:
        """A cancelled invocation that was on a slot: its agent stops it (sent after commit)."""
        self.hub.send_agent(node, P.CANCEL, invocation_id=inv_id, attempt=attempt, reason=reason)
        self.hub.work_changed(node)  # its core is free: placement rereads the node


def _runtime(value: Any) -> str:
    if value not in RUNTIME_NAMES:
        raise F.invalid(f"runtime must be one of {', '.join(RUNTIME_NAMES)}")
    return value


# Each field a user may set on a function, read and bounded.
FUNCTION_FIELDS: dict[str, Callable[[Any], Any]] = {
    "entrypoint": lambda v: F.text(v, "entrypoint", F.MAX_ENTRYPOINT, F.ENTRYPOINT_RE),
    "code_dir": lambda v: F.absolute_path(v, "code directory"),
    "cores": lambda v: F.whole(v, "cores", 1, F.MAX_CORES),
    "mem_mb": lambda v: F.whole(v, "memory (MiB)", 1, F.MAX_MEM_MB),
    "timeout_s": lambda v: F.number(v, "timeout (s)", 0, F.MAX_TIMEOUT_S, lo_open=True),
    "max_attempts": lambda v: F.whole(v, "max_attempts", 1, F.MAX_ATTEMPTS),
    "image": lambda v: F.absolute_path(v, "image"),
    "runtime": _runtime,
}


def _primary_gid(uid: int) -> int:
    import pwd

    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return uid


def _fn_row(fn: D.Function) -> dict:
    return {"function_id": fn.id, "name": fn.name, "entrypoint": fn.entrypoint, "code_dir": fn.code_dir,
            "cores": fn.cores, "mem_mb": fn.mem_mb, "timeout_s": fn.timeout_s, "max_attempts": fn.max_attempts,
            "image": fn.image, "runtime": fn.runtime, "created_at": fn.created_at.isoformat(),
            "updated_at": fn.updated_at.isoformat() if fn.updated_at else None}


def _slot_row(sl: D.Slot) -> dict:
    return {"slot_id": sl.id, "node": sl.node, "job_id": sl.job_id, "slurm_cpus": sl.slurm_cpus,
            "os_cpus": sl.os_cpus, "mem_mb": sl.mem_mb, "end_time": sl.end_time, "state": sl.state,
            "revoke_reason": sl.revoke_reason}
