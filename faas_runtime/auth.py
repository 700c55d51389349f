"""Who is asking: munge credentials, the same proof of identity Slurm itself relies on.

A client asks its local munged for a credential whose payload is the digest of the
request body (``request_digest``); the co-scheduler decodes it with its munged.
Munge proves the uid, its TTL bounds the age, and munged refuses a credential it has
already decoded (replay); the digest binds the credential to this one request.

Both go through libmunge (``faas_runtime.munge``, cffi): about 100 us a decode, no fork,
and the GIL released while munged answers, so the co-scheduler decodes in worker threads
without stalling its loop (coscheduler/identity.py).

Owns: request credentials (make, verify). May not touch: sockets, the database.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Optional

from . import munge
from . import protocol as P


class AuthError(Exception):
    """A credential could not be made or was refused."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int


def request_digest(msg: dict[str, Any]) -> str:
    """What a client request's credential vouches for: ``protocol.body_digest`` of the
    request, with each bytes value (a binary payload, at the top or in a list) standing
    as ``{"bytes-sha256": hex}``: JSON has no bytes, and the hash binds them all the same."""
    return P.body_digest({k: _digestible(v) for k, v in msg.items()})


def _digestible(value: Any) -> Any:
    if isinstance(value, bytes):
        return {"bytes-sha256": hashlib.sha256(value).hexdigest()}
    if isinstance(value, list) and any(isinstance(v, bytes) for v in value):
        return [_digestible(v) for v in value]
    return value


def make_credential(payload: str, socket: Optional[str] = None) -> str:
    try:
        return munge.encode(payload.encode(), socket)
    except munge.MungeError as exc:
        raise AuthError(f"munge could not create a credential: {exc}") from None


def verify_credential(cred: str, expected_payload: str, socket: Optional[str] = None) -> Identity:
    """Decode ``cred``; return the identity it proves if its payload is the expected one."""
    try:
        decoded = munge.decode(cred, socket)
    except munge.MungeError as exc:
        raise AuthError(str(exc) if str(exc).startswith("credential refused") else f"credential refused: {exc}") \
            from None
    if decoded.payload.strip() != expected_payload.encode():
        raise AuthError("credential does not match this request")
    return Identity(decoded.uid, decoded.gid)
