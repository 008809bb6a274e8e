"""`run.py call`: the common options (--address, --token, --timeout) go before or after the verb."""
from __future__ import annotations

import os
import subprocess

import pytest

from client.cli import build_parser
from tests.service import PYTHON, ROOT, start_service


@pytest.mark.parametrize("argv", [
    ["--address", "10.0.0.1:1", "--token", "tok", "--timeout", "3", "health"],
    ["health", "--address", "10.0.0.1:1", "--token", "tok", "--timeout", "3"],
    ["--address", "10.0.0.1:1", "health", "--token", "tok", "--timeout", "3"],
    ["--timeout", "3", "generate", "hi", "--address", "10.0.0.1:1", "--token", "tok"],
])
def test_common_options_before_or_after_verb(argv):
    args = build_parser().parse_args(argv)
    assert (args.address, args.token, args.timeout) == ("10.0.0.1:1", "tok", 3.0)


def test_value_before_verb_survives_verb_defaults(monkeypatch):
    monkeypatch.delenv("PML_ADDRESS", raising=False)
    monkeypatch.delenv("PYTHONML_TOKEN", raising=False)
    args = build_parser().parse_args(["--address", "h:9", "stats"])
    assert (args.address, args.token, args.timeout) == ("h:9", "", 60.0)
    args = build_parser().parse_args(["stats"])
    assert (args.address, args.token, args.timeout) == ("127.0.0.1:50051", "", 60.0)
    # after the verb wins over before it (the later value)
    args = build_parser().parse_args(["--timeout", "5", "echo", "fake", "--timeout", "7"])
    assert args.timeout == 7.0 and args.pool == "fake"


def test_every_verb_accepts_common_options():
    ap = build_parser()
    sub = next(a for a in ap._actions if a.dest == "verb")
    for name, p in sub.choices.items():
        for flag in ("--address", "--token", "--timeout"):
            assert flag in p._option_string_actions, f"verb {name} lacks {flag}"


@pytest.mark.integration
def test_call_health_with_address_after_verb():
    env = dict(os.environ)
    env.pop("PML_ADDRESS", None)
    with start_service(["--pools", "fake"]) as svc:
        after = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", "health", "--address", svc.address],
                               cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert "unrecognized arguments" not in after.stderr, after.stderr
        lines = dict(line.rsplit(None, 1) for line in after.stdout.splitlines() if line.strip())
        assert lines.get("(overall)") == "SERVING", after.stdout + after.stderr
        before = subprocess.run([PYTHON, os.path.join(ROOT, "run.py"), "call", "--address", svc.address,
                                 "health", "", "--timeout", "10"],
                                cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
        assert before.returncode == 0, before.stdout + before.stderr
        assert before.stdout.split() == ["(overall)", "SERVING"]
