"""Logging for the daemons: levels, stderr, and optionally a file. One place."""
from __future__ import annotations

import logging
from typing import Optional

FORMAT = "%(asctime)s %(levelname)s %(name)s[%(process)d]: %(message)s"


def setup_logging(level: str = "INFO", log_file: Optional[str] = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if log_file:
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=level.upper(), format=FORMAT, handlers=handlers, force=True)
