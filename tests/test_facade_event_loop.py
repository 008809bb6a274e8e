"""facade/event_loop.py: uvloop when installed unless PML_UVLOOP=0, asyncio's loop without it, a bad value
refused; and the facade serves on either loop (an Echo through the service on each)."""
from __future__ import annotations

import asyncio
import sys

import pytest

from common.status import StatusError
from facade import event_loop


def test_asyncio_loop_when_turned_off_or_uvloop_missing(monkeypatch):
    monkeypatch.setenv("PML_UVLOOP", "0")
    assert event_loop.loop_factory() is None and event_loop.loop_name() == "asyncio"
    monkeypatch.setenv("PML_UVLOOP", "1")
    monkeypatch.setitem(sys.modules, "uvloop", None)   # import uvloop -> ImportError
    assert event_loop.loop_factory() is None
    assert event_loop.run(asyncio.sleep(0, result=7)) == 7


def test_uvloop_when_installed(monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    monkeypatch.delenv("PML_UVLOOP", raising=False)
    assert event_loop.loop_factory() is uvloop.new_event_loop and event_loop.loop_name() == "uvloop"

    async def which():
        return type(asyncio.get_running_loop()).__module__
    assert event_loop.run(which()).startswith("uvloop")


def test_a_bad_value_is_refused(monkeypatch):
    monkeypatch.setenv("PML_UVLOOP", "maybe")
    with pytest.raises(StatusError, match="PML_UVLOOP"):
        event_loop.loop_factory()


@pytest.mark.integration
@pytest.mark.parametrize("flag", ["0", "1"])
def test_the_facade_serves_on_either_loop(flag):
    if flag == "1":
        pytest.importorskip("uvloop")
    from protos import pythonml_pb2 as X, pythonml_pb2_grpc as XG
    from tests.service import start_service
    with start_service(["--pools", "fake"], env={"PML_UVLOOP": flag}) as svc:
        replies = list(XG.DiagnosticsStub(svc.channel()).Echo(X.EchoRequest(pool="fake", payload=b"hi"), timeout=10))
        assert [r.payload for r in replies] == [b"hi"]
        assert ("uvloop" if flag == "1" else "asyncio") in svc.log()
