"""submit-function: register functions and invoke them on the spare cores of batch jobs.

One module per command (or per pair of commands that share their options); this module
holds the root group, ``main``, the console script ``submit-function``."""
from __future__ import annotations

from ..common import coscheduler_group
from .cancel import cancel_command
from .functions import delete_command, functions_command, show_command
from .invoke import invoke_command
from .list import list_command
from .register import register_command, update_command
from .result import result_command
from .status import output_command, status_command
from .wait import wait_command


@coscheduler_group
def main() -> None:
    """Run Python functions on cores and memory that Slurm batch jobs lend out."""


for _command in (register_command, update_command, functions_command, show_command, delete_command,
                 invoke_command, status_command, output_command, result_command, wait_command, cancel_command,
                 list_command):
    main.add_command(_command)
