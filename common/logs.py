"""Logging set-up: text or JSON lines on stderr, never blocking on a pipe nobody reads.

The orchestrator pipes our stdout/stderr and never reads them. The main process writes its log lines
with non-blocking writes and drops what does not fit (counting the drops); children write into pipes
that the main process drains (see broker/children.py), so no process can stall on logging.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time

dropped_lines = 0


def set_nonblocking(fd: int) -> None:
    try:
        os.set_blocking(fd, False)
    except OSError:
        pass


def write_nonblocking(fd: int, data: bytes) -> bool:
    """Write all of data or drop it; never blocks. Returns False when dropped."""
    global dropped_lines
    try:
        n = os.write(fd, data)
        while n < len(data):  # partial write: try the rest once, then give up
            data = data[n:]
            n = os.write(fd, data)
        return True
    except (BlockingIOError, BrokenPipeError, OSError):
        dropped_lines += 1
        return False


class JsonFormatter(logging.Formatter):
    def __init__(self, process_name: str):
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "proc": self.process_name, "pid": record.process, "logger": record.name,
               "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class NonBlockingStderrHandler(logging.Handler):
    def __init__(self, fd: int = 2):
        super().__init__()
        self.fd = fd
        set_nonblocking(fd)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record) + "\n"
        except Exception:
            return
        write_nonblocking(self.fd, line.encode("utf-8", "replace"))


def configure(level: str = "info", fmt: str = "text", process_name: str = "main",
              nonblocking: bool = False) -> logging.Logger:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler: logging.Handler = NonBlockingStderrHandler() if nonblocking else logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(process_name))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {process_name}[%(process)d] %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    logging.Formatter.converter = time.gmtime
    return logging.getLogger(process_name)
