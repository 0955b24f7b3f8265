"""Logging: every process writes its own file; only process 0 prints to the console."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from jz3_jax.runtime.paths import as_path, local_mirror

LOGGER_NAME = "jz3_jax"


def setup_logging(log_dir: str | os.PathLike | None, process_index: int = 0, level: int = logging.INFO) -> logging.Logger:
    """Configure the `jz3_jax` logger for this process and return it."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(level)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    fmt = logging.Formatter(f"%(asctime)s [p{process_index}] %(levelname)s %(message)s", "%H:%M:%S")
    if process_index == 0:
        console = logging.StreamHandler(sys.stderr)
        console.setFormatter(fmt)
        logger.addHandler(console)
    if log_dir is not None:
        # A log file is appended line by line: object stores (gs://) cannot, so a remote run dir
        # keeps its logs in a local mirror of the same path (named in the first log line).
        local = Path(os.fspath(local_mirror(as_path(log_dir))))
        local.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(local / f"process_{process_index}.log")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def get_logger() -> logging.Logger:
    """The project logger (configure it with `setup_logging` first)."""
    return logging.getLogger(LOGGER_NAME)
