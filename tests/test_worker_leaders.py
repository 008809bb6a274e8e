"""workers/base.py leader/followers: while every credit of a worker is busy in a handler run by the thread
that read its request, some thread still reads the worker's socket, so a CANCEL reaches those handlers
and their credits come back (which fails if the last thread free to read takes a request itself)."""
from __future__ import annotations

import pytest

from common import wire as P
from tests.broker_peer import Peer, run_dir_of
from tests.service import start_service

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("capacity", [1, 2])
def test_cancels_reach_handlers_that_hold_every_credit(capacity):
    with start_service(["--pools", "fake"], env={"PML_FAKE_CAPACITY": str(capacity), "PML_FAULT_INJECTION": "1"}) as svc:
        peer = Peer(f"ipc://{run_dir_of(svc.proc.pid)}/frontend.sock")
        try:
            for _ in range(3):   # several rounds: the turn to read moves between the threads
                slow = [peer.echo(action="sleep", sleep_ms=60_000, payload=b"s%d" % i) for i in range(capacity)]
                probe = peer.echo(payload=b"after")   # queued in the broker: no credit is free
                assert not peer.sock.poll(300)
                for rid in slow:
                    peer.send_raw(P.encode(P.CANCEL, {"id": rid}))
                # the probe can only run once a handler saw its CANCEL and gave its credit back
                command, _, _ = peer.recv_terminal(probe, timeout_ms=20_000)
                assert command == P.FINAL
                for rid in slow:
                    command, header, _ = peer.recv_terminal(rid, timeout_ms=20_000)
                    assert command == P.ERROR and header["code"] == "CANCELLED"
        finally:
            peer.close()
