"""submit-function against a stand-in client: what the commands send (no services needed)."""
import json

from click.testing import CliRunner

from coscheduler.cli.submit import main
from coscheduler.cli.submit import register as register_module
from faas_runtime.containers import RUNTIME_NAMES


class FakeClient:
    def __init__(self):
        self.registered = []

    def register(self, **fields):
        self.registered.append(fields)
        return 7


def test_register_sends_no_gid(tmp_path, monkeypatch):
    """The co-scheduler takes the group from its user database, never from the client."""
    fake = FakeClient()
    monkeypatch.setattr(register_module, "make_client", lambda ctx: fake)
    out = CliRunner().invoke(main, ["register", "f", "--entrypoint", "m:f", "--code", str(tmp_path),
                                    "--runtime", "bubblewrap", "-o", "json"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout) == {"function_id": 7, "name": "f"}
    assert "gid" not in fake.registered[0]
    assert fake.registered[0]["runtime"] == "bubblewrap" and fake.registered[0]["code_dir"] == str(tmp_path)


def test_runtime_choices_are_the_container_runtimes():
    for command in ("register", "update"):
        runtime = next(p for p in main.commands[command].params if p.name == "runtime")
        assert tuple(runtime.type.choices) == RUNTIME_NAMES
