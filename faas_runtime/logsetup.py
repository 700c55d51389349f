"""Logging for the daemons: levels, stderr, and optionally a file. One place."""
from __future__ import annotations

import logging
import logging.handlers
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def setup_logging(level: str = "INFO", log_file: Optional[str] = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        # Watched: a file logrotate moved away is reopened (debian/slurm-faas.logrotate).
        handlers.append(logging.handlers.WatchedFileHandler(log_file))
    logging.basicConfig(level=level.upper(), format=FORMAT, handlers=handlers, force=True)
