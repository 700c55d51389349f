"""faas-admin: the sysadmin's command line.

One module per command or command group; this module holds the root group, ``main``,
the console script ``faas-admin``."""
from __future__ import annotations

from ..common import coscheduler_group
from .analyze import analyze_command
from .db import db_group
from .dev_cluster import dev_cluster_group
from .keygen import keygen_command
from .plugin import install_plugin_command, uninstall_plugin_command
from .slots import slots_command
from .install import install_head_command, install_node_command, uninstall_head_command, uninstall_node_command
from .status import status_command


@coscheduler_group
def main() -> None:
    """Administer slurm-faas: slots, the SPANK plugin, the local dev cluster."""


for _command in (status_command, slots_command, db_group, dev_cluster_group, analyze_command, install_plugin_command,
                 uninstall_plugin_command, keygen_command, install_node_command, install_head_command,
                 uninstall_node_command, uninstall_head_command):
    main.add_command(_command)
