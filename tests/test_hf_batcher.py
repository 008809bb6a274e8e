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


class CountingEncoder:
    """encode() that records its batch sizes and takes `seconds` per call."""

    def __init__(self, seconds: float = 0.0):
        self.sizes: list = []
        self.seconds = seconds

    def __call__(self, texts):
        self.sizes.append(len(texts))
        time.sleep(self.seconds)
        return np.ones((len(texts), 3), dtype=np.float32)


def test_a_lone_client_is_served_without_waiting_for_company():
    enc = CountingEncoder()
    b = EmbeddingBatcher(enc, max_wait_s=2.0, name="m")   # the old timer would hold every call 2 s
    try:
        t0 = time.monotonic()
        for _ in range(3):
            b.embed(["a"], CancelToken())
        assert time.monotonic() - t0 < 1.0 and enc.sizes == [1, 1, 1]
    finally:
        b.close()


def test_a_closed_loop_of_clients_gets_full_batches_not_halves():
    """8 clients, each sending its next request when the last is answered: once the first round is in,
    each batch closes when all 8 are back, long before the timer (1 s here; the old batcher waited it out
    for every batch short of max_batch). Only the last batch may wait for clients that finished."""
    clients, rounds = 8, 6
    enc = CountingEncoder(seconds=0.01)
    b = EmbeddingBatcher(enc, max_wait_s=1.0, name="m")
    start = threading.Barrier(clients)

    def client(i):
        start.wait()
        for r in range(rounds):
            assert b.embed([f"{i}-{r}"], CancelToken()).shape == (1, 3)
    try:
        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        assert time.monotonic() - t0 < 2.5, enc.sizes       # at most one timer: the tail
        assert sum(enc.sizes) == clients * rounds
        assert enc.sizes.count(clients) >= rounds - 2, enc.sizes
    finally:
        b.close()


def test_when_callers_leave_only_one_batch_waits_for_them():
    """After a batch of 4 only one caller goes on: its first request waits out max_wait (its company
    does not come), the next ones are served at once."""
    enc = CountingEncoder()
    b = EmbeddingBatcher(enc, max_wait_s=0.3, name="m")
    try:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: b.embed([str(i)], CancelToken()), range(4)))
        waits = []
        for _ in range(3):
            t0 = time.monotonic()
            b.embed(["x"], CancelToken())
            waits.append(time.monotonic() - t0)
        assert waits[0] < 1.0 and max(waits[1:]) < 0.15, waits
    finally:
        b.close()


def test_the_fill_wait_follows_the_last_forward_pass_unless_max_wait_is_given():
    enc = CountingEncoder(seconds=0.2)
    adaptive, fixed = EmbeddingBatcher(enc, name="m"), EmbeddingBatcher(enc, max_wait_s=0.3, name="m")
    try:
        assert adaptive.fill_wait_s() == EmbeddingBatcher.MIN_WAIT_S     # no pass yet: the floor
        for b in (adaptive, fixed):
            b.embed(["a"], CancelToken())
        assert adaptive.last_pass_s >= 0.2
        assert adaptive.fill_wait_s() == EmbeddingBatcher.FILL_SHARE * adaptive.last_pass_s
        assert fixed.fill_wait_s() == 0.3                                # the operator's value wins
    finally:
        adaptive.close()
        fixed.close()


def test_callers_slower_than_the_floor_still_make_full_batches_when_passes_are_long():
    """4 clients that take 20 ms between an answer and their next request (4x MIN_WAIT_S, the old fixed
    timer, which split such batches) around a 0.6 s forward pass: the fill wait is then 150 ms, so
    each batch after the first closes when all 4 are back."""
    clients, rounds = 4, 4
    enc = CountingEncoder(seconds=0.6)
    b = EmbeddingBatcher(enc, name="m")
    start = threading.Barrier(clients)

    def client(i):
        start.wait()
        for r in range(rounds):
            b.embed([f"{i}-{r}"], CancelToken())
            time.sleep(0.02)
    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(client, range(clients)))
        assert sum(enc.sizes) == clients * rounds
        assert enc.sizes.count(clients) >= rounds - 1, enc.sizes
    finally:
        b.close()


def test_token_counts_are_asked_once_per_sub_batch_and_shared_out_per_request():
    enc, asked = HeldEncoder(), []

    def count(texts):
        asked.append(list(texts))
        return [len(t) for t in texts]
    b = EmbeddingBatcher(enc, max_batch=4, max_wait_s=0.0, name="m", count=count)
    try:
        with ThreadPoolExecutor(3) as pool:
            first = pool.submit(b.embed_counted, ["x"], CancelToken())
            assert enc.started.wait(5)                      # the first pass holds the model...
            two = pool.submit(b.embed_counted, ["aa", "bbb", "cccc", "d", "ee"], CancelToken())
            three = pool.submit(b.embed_counted, ["ffffff"], CancelToken())
            while b.waiting() < 2:                          # ... while both others queue
                time.sleep(0.005)
            enc.release.set()
            (v1, n1), (v2, n2), (v3, n3) = first.result(5), two.result(5), three.result(5)
        assert (n1, n2, n3) == (1, 2 + 3 + 4 + 1 + 2, 6)
        assert v2.shape == (5, 3) and v3.shape == (1, 3)
        # one count per forward pass, over exactly its texts (round-robin, at most max_batch: the
        # lone text of the third request goes with the second's first three)
        assert asked == enc.batches
        assert [sorted(x) for x in asked] == [["x"], ["aa", "bbb", "cccc", "ffffff"], ["d", "ee"]]
    finally:
        enc.release.set()
        b.close()


def test_without_a_counter_embed_counted_says_none():
    enc = CountingEncoder()
    b = EmbeddingBatcher(enc, name="m")
    try:
        vecs, tokens = b.embed_counted(["a", "b"], CancelToken())
        assert vecs.shape == (2, 3) and tokens is None
    finally:
        b.close()


def test_max_wait_ms_given_is_a_fixed_wait_none_given_follows_the_model():
    from workers.hf.pipelines.sentence_embeddings import max_wait_s
    assert max_wait_s({}, {}) is None
    assert max_wait_s({"max_wait_ms": "20"}, {"embed_max_wait_ms": 7}) == 0.02
    assert max_wait_s({}, {"embed_max_wait_ms": 7}) == 0.007
    assert max_wait_s({"max_wait_ms": 0}, {}) == 0.0
