"""Talk to the co-scheduler as a user: one request, one reply, with a munge credential."""
from __future__ import annotations

import itertools
import os
import time
from typing import Any, Callable, Optional

import zmq

from faas_runtime import curve
from faas_runtime import protocol as P

from .auth import make_credential, request_digest
from .states import TERMINAL, State


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
        self.endpoint = endpoint
        self.munge_socket = munge_socket
        self.timeout_s = timeout_s
        self._rids = itertools.count(1)
        self.pushed: list[list] = []  # [id, state] pairs of ENDED messages, until taken (``take_pushed``)
        self._ctx = zmq.Context.instance()
        self._sock = P.configure(self._ctx.socket(zmq.DEALER))
        curve.setup_client(self._sock)  # encrypted when FAAS_CURVE_DIR names the keys
        self._sock.connect(endpoint)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def request(self, msg_type: str, authenticated: bool = True, **fields: Any) -> dict:
        rid = f"{os.getpid()}-{next(self._rids)}"
        msg = {"v": P.VERSION, "type": msg_type, "rid": rid, **fields}
        if authenticated:
            msg["cred"] = make_credential(request_digest(msg), self.munge_socket)
        self._sock.send(P.encode(msg_type, **{k: v for k, v in msg.items() if k not in ("v", "type")}))
        deadline = time.monotonic() + self.timeout_s
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._sock.poll(int(remaining * 1000)):
                raise Unavailable(f"no answer from the co-scheduler at {self.endpoint} within {self.timeout_s:g} s")
            reply = P.decode(self._sock.recv())
            if reply.get("type") == P.ENDED:
                self._note_push(reply)
                continue
            if reply.get("rid") != rid:
                continue  # a late reply to an earlier, timed-out request
            if reply["type"] == P.ERROR:
                code = reply.get("code", P.E_INTERNAL)
                raise (PayloadTooLarge if code == P.E_TOO_LARGE else RequestError)(code, reply.get("message", "error"))
            return reply

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
                  window: int = 1000, progress: Optional[Callable[[int], None]] = None) -> dict[int, dict]:
        """Poll until every invocation ends; return {id: its row from ``list``}.

        Each poll asks about the first ``window`` invocations not yet seen ending, and moves
        on at once while whole windows have ended: invocations mostly end in the order they
        were submitted, so a wait for N costs about N/window requests, not N per poll."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        done: dict[int, dict] = {}
        todo = list(dict.fromkeys(ids))
        while todo:
            part = todo[:window]
            ended = 0
            for row in self.list(ids=part, limit=len(part)):
                if State(row["state"]) in TERMINAL:
                    done[row["invocation_id"]] = row
                    ended += 1
            if progress is not None and ended:
                progress(ended)  # how many more ended: a progress bar's step
            todo = [i for i in todo if i not in done]
            if any(i not in done for i in part):  # this window is still running: wait
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(f"{len(todo)} of {len(done) + len(todo)} invocations still "
                                       f"running after {timeout_s:g} s")
                time.sleep(poll_s)
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
