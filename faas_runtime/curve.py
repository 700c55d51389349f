"""CurveZMQ between agents and the co-scheduler: keys, and the socket options of each side.

``faas-admin keygen DIR --agent n1 --agent n2 ...`` writes (zmq.auth certificate files):

    DIR/coscheduler.key          public; every agent and client needs it (mode 0644)
    DIR/coscheduler.key_secret   the co-scheduler's alone (0600)
    DIR/agents/<node>.key        public; the co-scheduler's list of agents it trusts
    DIR/agents/<node>.key_secret that node's agent alone (0600)

With ``FAAS_CURVE_DIR`` (or ``--curve-dir``) set, the co-scheduler's ROUTER is a CURVE
server: every connection is encrypted, and a ZAP handler names each peer by its key:
``agent:<node>`` for a key in ``agents/``, ``client`` for any other (users prove who they
are per request with munge, so any client key is accepted). The daemon refuses agent
messages from a connection that is not ``agent:<node>`` for the node the message names,
so an agent cannot be impersonated by a user, nor one agent by another. Agents and
clients use the co-scheduler's public key; clients make a throwaway key pair.

Owns: CurveZMQ keys and the socket options of each side. May not touch: messages.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import zmq
import zmq.auth

ENV = "FAAS_CURVE_DIR"
SERVER = "coscheduler"


class CurveError(Exception):
    """Keys are missing or unreadable."""


def generate(directory: Path, agents: list[str], force: bool = False) -> list[Path]:
    """Create the co-scheduler's and each agent's key pair; return the files written."""
    directory = Path(directory)
    (directory / "agents").mkdir(parents=True, exist_ok=True)
    directory.chmod(0o755)
    (directory / "agents").chmod(0o755)
    written: list[Path] = []
    for where, name in [(directory, SERVER), *[(directory / "agents", a) for a in agents]]:
        public, secret = where / f"{name}.key", where / f"{name}.key_secret"
        if (public.exists() or secret.exists()) and not force:
            continue  # never replace keys silently: every party holding them would lose trust
        old = os.umask(0o077)
        try:
            pub, sec = zmq.auth.create_certificates(str(where), name)
        finally:
            os.umask(old)
        Path(pub).chmod(0o644)
        Path(sec).chmod(0o600)
        written += [Path(pub), Path(sec)]
    return written


def _load(path: Path, secret: bool) -> tuple[bytes, Optional[bytes]]:
    try:
        pub, sec = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise CurveError(f"cannot read CurveZMQ key {path}: {exc}") from None
    if secret and sec is None:
        raise CurveError(f"{path} holds no secret key")
    return pub, sec


def directory(explicit: Optional[str] = None) -> Optional[Path]:
    value = explicit or os.environ.get(ENV)
    return Path(value) if value else None


def _authenticator(ctx: zmq.Context, agents: dict[bytes, str]):
    """ZAP handler naming each peer by its key. zmq.auth.thread imports asyncio and ssl
    (40 ms): only the co-scheduler needs it, not every CLI and agent start."""
    from zmq.auth.thread import ThreadAuthenticator

    class Auth(ThreadAuthenticator):
        def curve_user_id(self, client_public_key: bytes) -> str:
            name = agents.get(zmq.utils.z85.encode(client_public_key) if len(client_public_key) == 32
                              else client_public_key)
            return f"agent:{name}" if name else "client"

    return Auth(ctx)


class CurveServer:
    """The co-scheduler's side: encrypts the ROUTER and names each peer by its key."""

    def __init__(self, ctx: zmq.Context, sock: zmq.Socket, keys: Path):
        public, secret = _load(keys / f"{SERVER}.key_secret", secret=True)
        agents: dict[bytes, str] = {}
        for cert in sorted((keys / "agents").glob("*.key")):
            agents[_load(cert, secret=False)[0]] = cert.stem
        self.auth = _authenticator(ctx, agents)
        self.auth.start()
        # Any client key may connect (users are identified by munge, per request); the key
        # only decides the name (curve_user_id), which the daemon checks for agent messages.
        self.auth.configure_curve(domain="*", location=zmq.auth.CURVE_ALLOW_ANY)
        sock.curve_server = True
        sock.curve_publickey, sock.curve_secretkey = public, secret

    @staticmethod
    def peer(frame: zmq.Frame) -> str:
        try:
            return frame.get("User-Id") or ""
        except (zmq.ZMQError, AttributeError):
            return ""

    def check_agent(self, frame: zmq.Frame, node: object) -> Optional[str]:
        """None if the connection is the agent of ``node``; else why not."""
        peer = self.peer(frame)
        if peer == f"agent:{node}":
            return None
        return f"agent messages for node {node!r} need that agent's CurveZMQ key (this connection is {peer or 'unknown'})"

    def stop(self) -> None:
        self.auth.stop()


def setup_agent(sock: zmq.Socket, keys: Path, node: str) -> None:
    """An agent's DEALER: its own key pair, and the co-scheduler's public key."""
    server_public, _ = _load(keys / f"{SERVER}.key", secret=False)
    public, secret = _load(keys / "agents" / f"{node}.key_secret", secret=True)
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = public, secret


def setup_client(sock: zmq.Socket, keys: Optional[Path] = None) -> bool:
    """A user's DEALER: a throwaway key pair and the co-scheduler's public key (if Curve is on)."""
    keys = keys or directory()
    if keys is None:
        return False
    server_public, _ = _load(keys / f"{SERVER}.key", secret=False)
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey = server_public
    sock.curve_publickey, sock.curve_secretkey = public, secret
    return True
