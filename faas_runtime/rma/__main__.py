"""The stand-alone RMA executor process (tests, benchmarks): serves one function.

    python -m faas_runtime.rma [--entrypoint mod:fn | path/lib.so:symbol] [--code DIR]
        [--control tcp://127.0.0.1:0] [--slots N] [--slot-size BYTES] [--ready-file PATH]

Raw bytes in and out (the warm executor, ``faas_runtime.executor``, serves JSON). The
bound control address is written to ``--ready-file`` once it serves; SIGTERM stops it.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import traceback
from typing import Optional

from faas_runtime.native import NativeFunction, is_native_entrypoint

from .server import Handler, NativeHandler, RmaExecutor
from .wire import DEFAULT_SLOT_SIZE, DEFAULT_SLOTS

log = logging.getLogger("faas.rma")


def load_handler(entrypoint: str, code_dir: Optional[str]) -> Handler:
    """A native function (``path/lib.so:symbol``) or a Python callable (``module:function``,
    loaded like the warm executor loads it)."""
    if is_native_entrypoint(entrypoint):
        return NativeHandler(NativeFunction(entrypoint, code_dir or "."))
    from faas_runtime.executor import load_callable

    # Without --code the module must be importable as it is (`python -m` already searches
    # the working directory first): sys.path is left alone.
    return load_callable(entrypoint, code_dir)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="faas-rma-executor")
    ap.add_argument("--control", default="tcp://127.0.0.1:0", help="ZeroMQ address to bind")
    ap.add_argument("--entrypoint", default="faas_runtime.rma.testing:echo")
    ap.add_argument("--code")
    ap.add_argument("--slots", type=int, default=DEFAULT_SLOTS)
    ap.add_argument("--slot-size", type=int, default=DEFAULT_SLOT_SIZE)
    ap.add_argument("--ready-file", help="write the bound control address here once serving")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    handler = load_handler(args.entrypoint, args.code)
    ex = RmaExecutor(handler, args.control, slots=args.slots, slot_size=args.slot_size)
    signal.signal(signal.SIGTERM, lambda *_: ex.stop())
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as fh:
            fh.write(ex.control)
        os.replace(tmp, args.ready_file)
    log.info("RMA executor on %s (%s) serving %s", ex.control, ex.ep.describe(), args.entrypoint)
    try:
        ex.serve()
    except Exception:
        log.error("executor failed:\n%s", traceback.format_exc())
        return 1
    finally:
        ex.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
