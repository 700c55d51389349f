"""Talk to the co-scheduler as a user: one request, one reply, with a munge credential."""
from __future__ import annotations

import itertools
import os
import time
from typing import Any, Callable, Optional

import zmq

from faas_runtime import curve
from faas_runtime import protocol as P
from faas_runtime.failover import MIN_DWELL_S, Link

from .auth import make_credential, request_digest
from .states import TERMINAL, State


MAX_SUBSCRIBE_IDS = 100_000  # ids per SUBSCRIBE request (the co-scheduler's bound)
# wait_many subscribes again after this long without a push: a restarted or failed-over
# co-scheduler forgot the subscriptions (and pushes to a dropped connection are lost).
RESUBSCRIBE_S = 5.0
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7800"


def user_address(endpoint: Optional[str] = None, munge_socket: Optional[str] = None) -> tuple[str, Optional[str]]:
    """Where a user's program reaches the co-scheduler: the arguments given, else
    FAAS_COSCHEDULER (one address or a list) and FAAS_MUNGE_SOCKET."""
    return (endpoint or os.environ.get("FAAS_COSCHEDULER", DEFAULT_ENDPOINT),
            munge_socket or os.environ.get("FAAS_MUNGE_SOCKET"))


class RequestError(Exception):
    """The co-scheduler refused a request; ``code`` is one of protocol.E_*."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class PayloadTooLarge(RequestError):
    """A payload (or a request) above the co-scheduler's bound (``max_payload_bytes``,
    ``max_request_bytes``): code ``too-large``."""


class Unavailable(Exception):
    """No answer from the co-scheduler within the timeout."""


class Client:
    def __init__(self, endpoint: str, munge_socket: Optional[str] = None, timeout_s: float = 30.0):
        """``endpoint``: the co-scheduler's address, or several separated by commas (high
        availability: requests go to the active one; faas_runtime/failover.py)."""
        self.endpoint = endpoint
        self.munge_socket = munge_socket
        self.timeout_s = timeout_s
        self._rids = itertools.count(1)
        self.pushed: list[list] = []  # [id, state] pairs of ENDED messages, until taken (``take_pushed``)
        self._ctx = zmq.Context.instance()
        # encrypted when FAAS_CURVE_DIR names the keys
        self._link = Link(self._ctx, endpoint, setup=curve.setup_client)

    @property
    def _sock(self) -> zmq.Socket:
        return self._link.sock

    def close(self) -> None:
        self._link.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg_type: str, authenticated: bool = True, **fields: Any) -> dict:
        rid = self._send(msg_type, authenticated, fields)
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            # With several addresses, look at the connection every 0.1 s: a dead co-scheduler
            # is left for the next one at once, not at the end of the timeout.
            wait = min(remaining, 0.1) if self._link.several else remaining
            if remaining <= 0:
                raise Unavailable(f"no answer from the co-scheduler at {self.endpoint} within {self.timeout_s:g} s")
            if not self._sock.poll(max(1, int(wait * 1000))):
                if self._link.check():
                    rid = self._failover(msg_type, authenticated, fields)
                continue
            reply = P.decode(self._sock.recv())
            if reply.get("type") == P.ENDED:
                self._note_push(reply)
                continue
            if reply.get("rid") != rid:
                continue  # a late reply to an earlier, timed-out request
            if reply["type"] == P.ERROR and reply.get("code") == P.E_STANDBY and self._link.several:
                self._link.broken = True
                rid = self._failover(msg_type, authenticated, fields)
                continue
            if reply["type"] == P.ERROR:
                code = reply.get("code", P.E_INTERNAL)
                raise (PayloadTooLarge if code == P.E_TOO_LARGE else RequestError)(code, reply.get("message", "error"))
            return reply

    def _send(self, msg_type: str, authenticated: bool, fields: dict) -> str:
        rid = f"{os.getpid()}-{next(self._rids)}"
        msg = {"v": P.VERSION, "type": msg_type, "rid": rid, **fields}
        if authenticated:  # a new credential each time: munged refuses a replayed one
            msg["cred"] = make_credential(request_digest(msg), self.munge_socket)
        self._sock.send(P.encode(msg_type, **{k: v for k, v in msg.items() if k not in ("v", "type")}))
        return rid

    def _failover(self, msg_type: str, authenticated: bool, fields: dict) -> str:
        """The co-scheduler at the current address is gone or a standby: send the request
        to the next address. A request the dead one took but never answered is taken twice
        (an invoke queues twice): at-least-once, as every request over a lost connection."""
        time.sleep(max(0.0, self._link.opened + MIN_DWELL_S - time.monotonic()))
        self._link.next()
        return self._send(msg_type, authenticated, fields)

    def _note_push(self, msg: dict) -> None:
        ended = msg.get("ended")
        if isinstance(ended, list):
            self.pushed += [e for e in ended if isinstance(e, list) and len(e) == 2]

    def take_pushed(self, timeout_s: float = 0.0) -> list[list]:
        """[id, state] of subscribed invocations that ended (SUBSCRIBE), waiting up to
        ``timeout_s`` for the first when none arrived yet."""
        deadline = time.monotonic() + timeout_s
        while not self.pushed:
            remaining = deadline - time.monotonic()
            if not self._sock.poll(max(0, int(remaining * 1000))):
                break
            try:
                msg = P.decode(self._sock.recv(zmq.NOBLOCK))
            except (zmq.Again, P.ProtocolError):
                continue
            if msg.get("type") == P.ENDED:
                self._note_push(msg)
        out, self.pushed = self.pushed, []
        return out

    def subscribe(self, ids: list[int]) -> dict:
        """Be told (``take_pushed``) when these invocations of yours end; the reply names
        those that already ended (``ended``) and ids that are not yours (``unknown``)."""
        return self.request(P.SUBSCRIBE, ids=ids)

    # -- the calls the CLIs and tests use ---------------------------------------------

    def ping(self) -> dict:
        return self.request(P.PING, authenticated=False)

    def stats(self) -> dict:
        """(root) The co-scheduler's step durations and counters."""
        return self.request(P.STATS)

    def overview(self) -> dict:
        """(root) Agents, the queue by state and user, throughput, capacity lent and used."""
        return self.request(P.OVERVIEW)

    def agents(self) -> dict[str, float]:
        return self.request(P.AGENTS, authenticated=False)["agents"]

    def register(self, **function: Any) -> int:
        """Create function ``name``, or replace it (``create_only=True``: refuse if it exists)."""
        return self.request(P.REGISTER, function=function)["function_id"]

    def update(self, name: str, **changes: Any) -> dict:
        return self.request(P.FUNCTION_UPDATE, name=name, function=changes)["function"]

    def functions(self) -> list[dict]:
        return self.request(P.FUNCTIONS)["functions"]

    def function(self, name: str) -> dict:
        return self.request(P.FUNCTION_SHOW, name=name)["function"]

    def delete(self, name: str, force: bool = False) -> dict:
        return self.request(P.FUNCTION_DELETE, name=name, force=force)

    def invoke(self, function: str, payload_json: str, priority: int = 0) -> int:
        return self.request(P.INVOKE, function=function, payload_json=payload_json, priority=priority)["invocation_id"]

    def check_batch(self, function: str, count: int, priority: int = 0) -> dict:
        """Ask whether ``count`` invocations would be accepted (function, quota, priority);
        the reply carries the co-scheduler's limits (max_payload_bytes, max_batch). Writes nothing."""
        return self.request(P.INVOKE_BATCH, function=function, check_count=count, priority=priority)

    def invoke_batch(self, function: str, payloads: list, priority: int = 0, chunk: int = 1000,
                     progress: Optional[Callable[[int], None]] = None, max_bytes: int = 8 << 20,
                     subscribe: bool = False) -> list[int]:
        """Queue many invocations, at most ``chunk`` and ``max_bytes`` of payload per request
        (each request all or nothing; the co-scheduler takes frames up to max_request_bytes).
        A payload is JSON text, or bytes (binary). ``subscribe``: be told when they end."""
        extra = {"subscribe": True} if subscribe else {}
        ids: list[int] = []
        start = 0
        while start < len(payloads):
            end, size = start, 0
            while end < len(payloads) and end - start < chunk and (end == start or size + len(payloads[end]) <= max_bytes):
                size += len(payloads[end])
                end += 1
            part = payloads[start:end]
            ids += self.request(P.INVOKE_BATCH, function=function, payloads=part, priority=priority,
                                **extra)["invocation_ids"]
            if progress is not None:
                progress(len(part))
            start = end
        return ids

    def cancel(self, invocation_id: int) -> str:
        return self.request(P.CANCEL_INVOCATION, invocation_id=invocation_id)["state"]

    def cancel_function(self, function: str) -> int:
        """Cancel every unfinished invocation of one of your functions; how many."""
        return self.request(P.CANCEL_FUNCTION, function=function)["cancelled"]

    def list(self, states: Optional[list[str]] = None, function: Optional[str] = None,
             ids: Optional[list[int]] = None, limit: int = 100, all_users: bool = False) -> list[dict]:
        return self.request(P.LIST, states=states or [], function=function, ids=ids or [], limit=limit,
                            all_users=all_users)["invocations"]

    def status(self, invocation_id: int) -> dict:
        return self.request(P.STATUS, invocation_id=invocation_id)

    def result_json(self, invocation_id: int) -> str:
        return self.request(P.RESULT_GET, invocation_id=invocation_id)["value_json"]

    def results(self, ids: list[int], chunk: int = 1000) -> list[dict]:
        """One row per id, in the order given: {invocation_id, state, value_json} once it
        succeeded, {..., error, traceback} once it failed, the state alone before it ends."""
        out: list[dict] = []
        todo = list(ids)
        while todo:
            rows = self.request(P.RESULTS, ids=todo[:chunk])["results"]  # a prefix: the reply is bounded
            out += rows
            todo = todo[len(rows):]
        return out

    def output(self, invocation_id: int) -> str:
        """The end of a finished invocation's stdout and stderr (protocol.MAX_OUTPUT_BYTES)."""
        return self.request(P.OUTPUT_GET, invocation_id=invocation_id)["output"]

    def slots(self) -> list[dict]:
        return self.request(P.SLOTS)["slots"]

    def wait_many(self, ids: list[int], timeout_s: Optional[float] = None, poll_s: float = 0.2,
                  window: int = 1000, progress: Optional[Callable[[int], None]] = None,
                  subscribed: bool = False, read_succeeded: bool = True) -> dict[int, dict]:
        """Wait until every invocation ends; return {id: its row from ``list``}.
        ``subscribed``: they were submitted with ``invoke_batch(subscribe=True)`` on this
        client, so the first SUBSCRIBE (a request, and a read of every id) is not needed.
        ``read_succeeded=False``: a caller that needs only the states (the CLI's batch
        summary) gets ``{"invocation_id", "state"}`` for those pushed as SUCCEEDED, not
        read back; the rest are read, with their errors.

        The co-scheduler pushes ENDED as they end (SUBSCRIBE), and the rows of those that
        ended are read by id, at most every ``poll_s`` or a ``window`` at a time: a wait for
        N costs about N/window requests and each row is read once, while polling would read
        the unfinished ones again every turn. Pushes lost with the connection (a restart,
        a failover) are made up for by subscribing again when none came for a while (its
        reply names those that ended meanwhile)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        done: dict[int, dict] = {}
        todo = dict.fromkeys(ids)  # not seen ending yet, in order
        ended: dict[int, None] = {}  # told they ended, rows not read yet
        resubscribe_at, read_at = (time.monotonic() + RESUBSCRIBE_S if subscribed else 0.0), time.monotonic() + poll_s

        def heard(pairs: list) -> None:
            """[id, state] of ended invocations: known SUCCEEDED ones are done unread when
            the caller allows it; the rest wait for a read."""
            known = 0
            for inv_id, state in pairs:
                if inv_id not in todo or inv_id in ended:
                    continue
                if not read_succeeded and state == State.SUCCEEDED.value:
                    del todo[inv_id]
                    done[inv_id] = {"invocation_id": inv_id, "state": state}
                    known += 1
                else:
                    ended[inv_id] = None
            if known and progress is not None:
                progress(known)

        while todo:
            if time.monotonic() >= resubscribe_at:
                unread = [i for i in todo if i not in ended]
                for start in range(0, len(unread), MAX_SUBSCRIBE_IDS):
                    heard(self.subscribe(unread[start:start + MAX_SUBSCRIBE_IDS])["ended"])
                resubscribe_at = time.monotonic() + RESUBSCRIBE_S
            until = min(read_at, resubscribe_at) if ended else resubscribe_at
            if deadline is not None:
                until = min(until, deadline)
            pushed = self.take_pushed(max(0.0, until - time.monotonic()))
            heard(pushed)
            if pushed:
                resubscribe_at = time.monotonic() + RESUBSCRIBE_S  # the pushes are coming
            if ended and (len(ended) >= min(window, len(todo)) or time.monotonic() >= read_at):
                part = list(itertools.islice(ended, window))
                got = 0
                for row in self.list(ids=part, limit=len(part)):
                    inv_id = row["invocation_id"]
                    if State(row["state"]) in TERMINAL and inv_id in todo:
                        del todo[inv_id]
                        done[inv_id] = row
                        got += 1
                for inv_id in part:
                    ended.pop(inv_id, None)
                if progress is not None and got:
                    progress(got)  # how many more ended: a progress bar's step
                now = time.monotonic()
                read_at = now + poll_s
                if got:
                    resubscribe_at = now + RESUBSCRIBE_S  # the pushes are coming
            if todo and deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{len(todo)} of {len(done) + len(todo)} invocations still "
                                   f"running after {timeout_s:g} s")
        return done

    def wait(self, invocation_id: int, timeout_s: Optional[float] = None, poll_s: float = 0.1,
             on_change: Optional[Callable[[dict], None]] = None) -> dict:
        """Poll until the invocation ends; return its final status. ``on_change(status)``
        hears each new state (and a queued one's new reason)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        seen = None
        while True:
            st = self.status(invocation_id)
            if State(st["state"]) in TERMINAL:
                return st
            if on_change is not None and (st["state"], st.get("reason")) != seen:
                seen = (st["state"], st.get("reason"))
                on_change(st)
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"invocation {invocation_id} is still {st['state']} after {timeout_s:g} s")
            time.sleep(poll_s)
