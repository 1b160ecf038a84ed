"""One loguru configuration for every command: readable on a terminal, quiet libraries."""

from __future__ import annotations

import os
import sys

from loguru import logger

_FORMAT = "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> <cyan>{name}</cyan> {message}"


def setup_logging(level: str = "INFO") -> None:
    level = level.upper()
    logger.remove()
    logger.add(sys.stderr, level=level, format=_FORMAT, colorize=None, backtrace=False, diagnose=False)
    # Ultralytics prints a banner and per-call lines unless told otherwise.
    os.environ.setdefault("YOLO_VERBOSE", "False")
