"""workers/hf/embeddings.EmbeddingBatcher with a fake encoder: the request's cancel token is asked before every
sub-batch (the caller blocks on its result, it does not poll), and an unload ends waiting requests with the
typed common.status.ModelUnloaded."""
from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from common.status import ModelUnloaded, StatusError
from workers.hf.cancel import CancelToken
from workers.hf.embeddings import EmbeddingBatcher, Stopped


class HeldEncoder:
    """encode() that records its batches and can hold the first one until released."""

    def __init__(self):
        self.batches: list = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(self, texts):
        self.batches.append(list(texts))
        self.started.set()
        self.release.wait(10)
        return np.ones((len(texts), 3), dtype=np.float32)


def test_a_cancelled_request_is_dropped_before_its_next_sub_batch():
    enc = HeldEncoder()
    b = EmbeddingBatcher(enc, max_batch=1, max_wait_s=0.0, name="m")
    try:
        token = CancelToken()
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(b.embed, ["a", "b", "c"], token)
            assert enc.started.wait(5)           # the first text's sub-batch is running
            token.event.set()
            enc.release.set()
            err = fut.exception(5)
        assert isinstance(err, Stopped), err
        assert err.reason == "cancelled" and err.done == 1
        assert enc.batches == [["a"]] and b.dropped_texts == 2
    finally:
        enc.release.set()
        b.close()


def test_an_expired_request_is_never_encoded():
    enc = HeldEncoder()
    enc.release.set()
    b = EmbeddingBatcher(enc, name="m")
    try:
        with pytest.raises(Stopped) as ei:
            b.embed(["a"], CancelToken(deadline=time.time() - 1))
        assert ei.value.reason == "deadline" and ei.value.done == 0 and enc.batches == []
        assert b.embed(["b"], CancelToken()).shape == (1, 3)
    finally:
        b.close()


def test_unload_ends_waiting_requests_with_model_unloaded():
    enc = HeldEncoder()
    b = EmbeddingBatcher(enc, max_batch=1, max_wait_s=0.0, name="tiny-bert")
    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(b.embed, ["a", "b"], CancelToken())
        assert enc.started.wait(5)
        b.close()                            # unloaded while the request still has a text to go
        enc.release.set()
        err = fut.exception(5)
    assert isinstance(err, ModelUnloaded) and isinstance(err, StatusError), err
    assert err.code == "UNAVAILABLE" and err.model_id == "tiny-bert" and "unloaded while this request waited" in str(err)
    with pytest.raises(ModelUnloaded):
        b.embed(["c"], CancelToken())
