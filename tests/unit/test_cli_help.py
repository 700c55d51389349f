"""Every command's --help renders (click's CliRunner, no services needed)."""
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
