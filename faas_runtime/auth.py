"""Who is asking: munge credentials, the same proof of identity Slurm itself relies on.

A client asks its local munged for a credential whose payload is the digest of the
request body (``protocol.body_digest``); the co-scheduler decodes it with its munged.
Munge proves the uid, its TTL bounds the age, and munged refuses a credential it has
already decoded (replay); the digest binds the credential to this one request.

The munge tools (``munge``/``unmunge`` from Debian's munge package) are called with an
argv list, never through a shell.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from typing import Optional


class AuthError(Exception):
    """A credential could not be made or was refused."""


@dataclass(frozen=True)
class Identity:
    uid: int
    gid: int


def _socket_args(socket: Optional[str]) -> list[str]:
    return ["--socket", socket] if socket else []


def make_credential(payload: str, socket: Optional[str] = None) -> str:
    try:
        out = subprocess.run(
            ["munge", *_socket_args(socket), "--string", payload],
            capture_output=True, text=True, timeout=10,
        )
    except FileNotFoundError:
        raise AuthError("the 'munge' command is missing: install the Debian package munge") from None
    if out.returncode != 0:
        raise AuthError(f"munge could not create a credential: {out.stderr.strip()}")
    return out.stdout.strip()


def verify_credential(cred: str, expected_payload: str, socket: Optional[str] = None) -> Identity:
    """Decode ``cred``; return the identity it proves if its payload is the expected one."""
    try:
        out = subprocess.run(
            ["unmunge", *_socket_args(socket)], input=cred, capture_output=True, text=True, timeout=10,
        )
    except FileNotFoundError:
        raise AuthError("the 'unmunge' command is missing: install the Debian package munge") from None
    meta, _, payload = out.stdout.partition("\n\n")
    # unmunge prints "KEY:   text (number)" lines, e.g. "STATUS: Replayed credential (17)".
    fields = {k.strip(): v.strip() for k, _, v in (line.partition(":") for line in meta.splitlines())}
    if out.returncode != 0:
        reason = fields.get("STATUS") or out.stderr.strip() or f"unmunge exited {out.returncode}"
        raise AuthError(f"credential refused: {reason}")
    try:
        uid = int(fields["UID"].rsplit("(", 1)[1].rstrip(")"))
        gid = int(fields["GID"].rsplit("(", 1)[1].rstrip(")"))
    except (KeyError, IndexError, ValueError):
        raise AuthError("unmunge gave no UID/GID") from None
    if payload.strip() != expected_payload:
        raise AuthError("credential does not match this request")
    return Identity(uid, gid)
