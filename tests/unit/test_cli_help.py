"""Every command's --help renders (click's CliRunner, no services needed)."""
import importlib
import pkgutil

import click
import pytest
from click.testing import CliRunner

from coscheduler.cli.admin import main as admin
from coscheduler.cli.submit import main as submit
from coscheduler.daemon import main as coscheduler_main
from faas_runtime.agent import main as agent_main


def _all_commands(cmd, path=()):
    yield path, cmd
    if isinstance(cmd, click.Group):
        for name, sub in cmd.commands.items():
            yield from _all_commands(sub, path + (name,))


CASES = [(root, path) for root in (submit, admin) for path, _ in _all_commands(root)] + [
    (coscheduler_main, ()), (agent_main, ())]


@pytest.mark.parametrize("root,path", CASES, ids=lambda v: " ".join(v) if isinstance(v, tuple) else v.name)
def test_help_renders(root, path):
    result = CliRunner().invoke(root, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_submit_function_commands_exist():
    assert {"register", "invoke", "status", "result", "wait"} <= set(submit.commands)
    assert {"slots", "dev-cluster", "analyze"} <= set(admin.commands)


@pytest.mark.parametrize("root,package", [(submit, "coscheduler.cli.submit"), (admin, "coscheduler.cli.admin")],
                         ids=["submit-function", "faas-admin"])
def test_every_command_module_is_in_its_root_group(root, package):
    """One module per command: each module's commands must be reachable from the root
    group (so that the --help test above renders them too)."""
    reachable = {id(cmd) for _, cmd in _all_commands(root)}
    for info in pkgutil.iter_modules(importlib.import_module(package).__path__):
        module = importlib.import_module(f"{package}.{info.name}")
        defined = [v for v in vars(module).values()
                   if isinstance(v, click.Command) and v.callback.__module__ == module.__name__]
        assert defined, f"{module.__name__} defines no command"
        assert all(id(cmd) in reachable for cmd in defined), f"a command of {module.__name__} is not registered"


def test_rma_executor_help_renders(capsys):
    from faas_runtime.rma.__main__ import main as rma_main

    with pytest.raises(SystemExit) as exc:
        rma_main(["--help"])
    assert exc.value.code == 0 and "--entrypoint" in capsys.readouterr().out
