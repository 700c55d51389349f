"""Parsl's own test suite on lent cores: the ``--config`` file tests/integration/test_parsl.py
gives Parsl's pytest. The cluster's endpoint and munge socket come from the environment
(FAAS_COSCHEDULER, FAAS_MUNGE_SOCKET); the nodes import Parsl from this environment's
site-packages (the code directory)."""
import sysconfig

from parsl.config import Config

from slurm_faas.parsl import SlurmFaasExecutor


def fresh_config():
    return Config(executors=[SlurmFaasExecutor(label="lent", mem="256M", timeout=120,
                                               code_dir=sysconfig.get_paths()["purelib"])])


config = fresh_config()
