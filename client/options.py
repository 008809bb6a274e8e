"""Parsing shared by the CLI verbs: repeated `--option key=value` arguments into a dict."""
from __future__ import annotations


def key_values(pairs) -> dict:
    """['k=v', ...] -> {'k': 'v'}; a pair without '=' ends the CLI with a message."""
    out = {}
    for kv in pairs or []:
        k, sep, v = kv.partition("=")
        if not sep:
            raise SystemExit(f"--option expects key=value, got {kv!r}")
        out[k] = v
    return out
