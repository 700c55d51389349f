"""faas_runtime.munge against a real, private munged that this module starts (own key,
socket, pid, log and seed files in a temporary directory), checked both ways against
Debian's munge/unmunge tools."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from contextlib import ExitStack

import pytest

from coscheduler.tools.private_munged import private_munged
from faas_runtime import munge
from tests.conftest import missing


@pytest.fixture(scope="module")
def munged():
    """The socket path of a private munged, stopped after the module."""
    if shutil.which("munged") is None or shutil.which("unmunge") is None:
        missing("munged/unmunge are not installed: install the Debian package munge (make deps)")
    if not munge.available():
        missing("the libmunge binding is not built: python3 -m faas_runtime._build_munge")
    with ExitStack() as stack:
        try:
            sock = stack.enter_context(private_munged())
        except RuntimeError as exc:
            missing(str(exc))
        yield sock


def test_round_trip_carries_uid_gid_payload_and_origin(munged):
    cred = munge.decode(munge.encode(b"digest-of-request", socket=munged), socket=munged)
    assert (cred.uid, cred.gid, cred.payload) == (os.getuid(), os.getgid(), b"digest-of-request")
    assert cred.addr == "" or cred.addr.count(".") == 3


def test_binary_and_empty_payloads(munged):
    blob = bytes(range(256)) * 3 + b"\0tail"
    assert munge.decode(munge.encode(blob, socket=munged, ttl=60), socket=munged).payload == blob
    assert munge.decode(munge.encode(b"", socket=munged), socket=munged).payload == b""


def test_replay_is_refused(munged):
    text = munge.encode(b"once", socket=munged)
    munge.decode(text, socket=munged)
    with pytest.raises(munge.MungeError) as err:
        munge.decode(text, socket=munged)
    assert err.value.code == "replayed"
    assert str(err.value).startswith("credential refused: Replayed credential")


@pytest.mark.parametrize("garbage", ["garbage", "MUNGE:AwQFAAD0nRAtLPr+aX5RO7vKI1nUr1cVcSgpvInNHQ8:", "MUNGE:é:"])
def test_garbage_is_invalid(munged, garbage):
    with pytest.raises(munge.MungeError) as err:
        munge.decode(garbage, socket=munged)
    assert err.value.code == "invalid" and str(err.value).startswith("credential refused:")


def test_wrong_socket(munged, tmp_path):
    for call in (lambda: munge.encode(b"x", socket=str(tmp_path / "none")),
                 lambda: munge.decode(munge.encode(b"x", socket=munged), socket=str(tmp_path / "none"))):
        with pytest.raises(munge.MungeError) as err:
            call()
        assert err.value.code == "socket" and "none" in str(err.value)


def test_cli_credential_decodes(munged):
    out = subprocess.run(["munge", "-S", munged, "-s", "from the CLI"], capture_output=True, text=True, check=True)
    cred = munge.decode(out.stdout, socket=munged)
    assert (cred.uid, cred.payload) == (os.getuid(), b"from the CLI")


def test_unmunge_accepts_our_credential(munged):
    out = subprocess.run(["unmunge", "-S", munged], input=munge.encode(b"to the CLI", socket=munged),
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    meta, _, payload = out.stdout.partition("\n\n")
    assert "UID:" in meta and f"({os.getuid()})" in meta and payload.strip() == "to the CLI"


def test_parallel_decodes_from_threads(munged):
    from concurrent.futures import ThreadPoolExecutor

    creds = [munge.encode(b"%d" % i, socket=munged) for i in range(200)]
    with ThreadPoolExecutor(4) as pool:
        payloads = list(pool.map(lambda c: munge.decode(c, socket=munged).payload, creds))
    assert payloads == [b"%d" % i for i in range(200)]


def test_expired_credential(munged):
    text = munge.encode(b"short-lived", socket=munged, ttl=1)
    time.sleep(2.1)
    with pytest.raises(munge.MungeError) as err:
        munge.decode(text, socket=munged)
    assert err.value.code == "expired" and "Expired credential" in str(err.value)


def test_credential_of_another_key_is_invalid(munged):
    with private_munged() as other:
        text = munge.encode(b"forged", socket=other)
    with pytest.raises(munge.MungeError) as err:
        munge.decode(text, socket=munged)
    assert err.value.code == "invalid", err.value


def test_gil_released_while_waiting_for_munged(munged, tmp_path):
    """A decode blocked in libmunge (on a socket that never answers) lets Python run."""
    import socket
    import threading

    fake = tmp_path / "silent.socket"
    with socket.socket(socket.AF_UNIX) as silent:
        silent.bind(str(fake))
        silent.listen(1)  # connect() succeeds, nobody reads or replies
        outcome = []
        thread = threading.Thread(target=lambda: outcome.append(pytest.raises(munge.MungeError, munge.decode,
                                                                              "MUNGE:x:", socket=str(fake))))
        thread.start()
        start = time.monotonic()
        time.sleep(0.3)
        assert time.monotonic() - start < 1.0 and thread.is_alive()  # woke up while the decode waits in C
        # Unblock: the path now leads to the real munged, which libmunge reaches on its retry.
        os.symlink(munged, str(fake) + ".new")
        os.replace(str(fake) + ".new", fake)
    thread.join(10)
    assert not thread.is_alive() and outcome[0].value.code == "invalid"
