"""Parsl on lent cores: a Parsl executor whose tasks are slurm_faas calls.

    import parsl
    from parsl.config import Config
    from slurm_faas.parsl import SlurmFaasExecutor

    parsl.load(Config(executors=[SlurmFaasExecutor(label="lent", cores=1, mem="1G")]))

Each Parsl task is one invocation (``slurm_faas.Executor.submit``): Parsl's DataFlowKernel
resolves dependencies and retries; this executor only runs what is ready. A task's
``parsl_resource_specification`` may name ``cores``, ``memory`` (MiB) and ``walltime``
(s), mapped to the call's options. The nodes must be able to import what the task's
function refers to (Parsl's own wrappers included): give ``code_dir`` a directory holding
them (an environment's site-packages the nodes see), or use a ``container``.
"""
from __future__ import annotations

from concurrent.futures import Future
from typing import Any, Callable, Optional

from parsl.executors.base import ParslExecutor
from parsl.executors.errors import InvalidResourceSpecification

from .executor import Executor

_SPEC_OPTIONS = {"cores": "cores", "memory": "mem", "walltime": "timeout", "priority": "priority"}


class SlurmFaasExecutor(ParslExecutor):
    def __init__(self, label: str = "slurm_faas", endpoint: Optional[str] = None,
                 munge_socket: Optional[str] = None, **options: Any):
        super().__init__()
        self.label = label
        self._endpoint, self._munge_socket, self._options = endpoint, munge_socket, options
        self._executor: Optional[Executor] = None

    def start(self) -> None:
        self._executor = Executor(self._endpoint, self._munge_socket, **self._options)

    def submit(self, func: Callable, resource_specification: dict, *args: Any, **kwargs: Any) -> Future:
        if self._executor is None:
            raise RuntimeError(f"executor {self.label} is not started")
        unknown = set(resource_specification or {}) - set(_SPEC_OPTIONS)
        if unknown:
            raise InvalidResourceSpecification(unknown, f"{self.label} supports {', '.join(_SPEC_OPTIONS)}")
        options = {_SPEC_OPTIONS[k]: v for k, v in (resource_specification or {}).items()}
        target = self._executor.options(**options) if options else self._executor
        return target.submit(func, *args, **kwargs)

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
