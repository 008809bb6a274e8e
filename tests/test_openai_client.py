"""The OpenAI-compatible HTTP API (facade/openai_http.py, run.py --http-port) driven by the official `openai`
Python client (requirements-dev.txt): plain and streamed chat, completions, embeddings, transcription, an
unknown model, a wrong key, and a stream the client closes after its first chunk.

One service for the module: `--pools hf --cuda off --http-port PORT` with the shared token as the API key.
"""
from __future__ import annotations

import os
import time
import urllib.request

import pytest

openai = pytest.importorskip("openai")

from protos import pythonml_pb2 as X  # noqa: E402
from protos import pythonml_pb2_grpc as XG  # noqa: E402
from tests.service import ROOT, free_port, start_service, wait_for  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "test-key"
CHAT_MODEL = "SmolLM2-135M-Instruct"
EMBED_MODEL = "all-MiniLM-L6-v2"
SPEECH_MODEL = "whisper-tiny.en"


def _audio(name: str) -> str:
    for d in (os.path.join(ROOT, "tests", "assets", "audio"), os.path.join(os.path.dirname(ROOT), "shared", "assets", "audio")):
        p = os.path.join(d, name)
        if os.path.exists(p):
            return p
    raise FileNotFoundError(name)


WAV = _audio("kitchen_lights.wav")
with open(WAV[:-4] + ".txt") as _f:
    TRANSCRIPT = _f.read().strip()


def _words(text: str) -> set:
    return {w.strip(".,!?;:'\"").lower() for w in text.split()} - {""}


@pytest.fixture(scope="module")
def svc():
    port = free_port()
    s = start_service(["--pools", "hf", "--cuda", "off", "--http-port", str(port)], env={"PYTHONML_TOKEN": TOKEN})
    s.http_port = port
    s.base_url = f"http://127.0.0.1:{port}/v1"
    # the HTTP listener comes up with the facade; allow it a moment past SERVING
    end = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(urllib.request.Request(s.base_url + "/models",
                                                          headers={"Authorization": f"Bearer {TOKEN}"}), timeout=5)
            break
        except Exception:
            if time.time() > end:
                s.stop()
                raise
            time.sleep(0.2)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def client(svc):
    c = openai.OpenAI(base_url=svc.base_url, api_key=TOKEN, timeout=300, max_retries=0)
    yield c
    c.close()


def _inflight(svc) -> int:
    st = XG.StatsStub(svc.channel()).GetStats(X.StatsRequest(), timeout=10,
                                               metadata=[("authorization", f"Bearer {TOKEN}")])
    return sum(w.inflight for w in st.workers)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_models_list(client):
    ids = [m.id for m in client.models.list()]
    for m in (CHAT_MODEL, EMBED_MODEL, SPEECH_MODEL):
        assert m in ids, ids
    assert client.models.retrieve(CHAT_MODEL).id == CHAT_MODEL


def test_chat_plain(client):
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    assert r.object == "chat.completion"
    assert len(r.choices) == 1
    ch = r.choices[0]
    assert ch.message.role == "assistant"
    assert isinstance(ch.message.content, str) and ch.message.content.strip()
    assert ch.finish_reason in ("stop", "length")
    if r.usage is not None:
        assert 0 < r.usage.completion_tokens <= 16
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
        assert r.usage.prompt_tokens > 5   # the chat template's tokens and the messages', counted by the worker


def test_chat_streamed_matches_plain(client):
    kw = dict(model=CHAT_MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    plain = client.chat.completions.create(**kw).choices[0].message.content
    pieces, finish, chunks = [], None, 0
    with client.chat.completions.create(stream=True, **kw) as stream:
        for chunk in stream:
            chunks += 1
            assert chunk.object == "chat.completion.chunk"
            for c in chunk.choices:
                if c.delta and c.delta.content:
                    pieces.append(c.delta.content)
                if c.finish_reason:
                    finish = c.finish_reason
    assert chunks >= 2, "the answer came in one piece: not streamed"
    assert finish in ("stop", "length")
    assert "".join(pieces) == plain  # greedy: the same text whether streamed or not


def test_completions(client):
    r = client.completions.create(model=CHAT_MODEL, prompt="The capital of France is", max_tokens=16, temperature=0)
    assert r.object == "text_completion"
    assert len(r.choices) == 1
    assert isinstance(r.choices[0].text, str) and r.choices[0].text.strip()
    assert r.choices[0].finish_reason in ("stop", "length")
    if r.usage is not None:
        assert 0 < r.usage.completion_tokens <= 16


def test_embeddings(client):
    texts = ["The cat sits on the mat.", "A cat is sitting on a mat.", "Stock markets fell sharply today."]
    r = client.embeddings.create(model=EMBED_MODEL, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 384 for v in vecs)
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    norm = lambda a: dot(a, a) ** 0.5  # noqa: E731
    cos = lambda a, b: dot(a, b) / (norm(a) * norm(b))  # noqa: E731
    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])  # the paraphrase is nearer than the unrelated one
    # a single string and explicit float encoding
    one = client.embeddings.create(model=EMBED_MODEL, input="The cat sits on the mat.", encoding_format="float")
    assert len(one.data) == 1 and len(one.data[0].embedding) == 384
    # the worker counts the tokens it read ([CLS] the cat sits on the mat . [SEP])
    assert one.usage.prompt_tokens == 9 and r.usage.prompt_tokens > one.usage.prompt_tokens
    assert cos(one.data[0].embedding, vecs[0]) > 0.999


@pytest.mark.parametrize("fmt", ["json", "text", "verbose_json"])
def test_transcription(client, fmt):
    with open(WAV, "rb") as f:
        r = client.audio.transcriptions.create(model=SPEECH_MODEL, file=f, response_format=fmt)
    text = r if fmt == "text" else r.text
    assert isinstance(text, str)
    expected = _words(TRANSCRIPT)
    got = _words(text)
    assert len(expected & got) >= 0.7 * len(expected), (text, TRANSCRIPT)
    if fmt == "verbose_json":
        assert r.segments, "verbose_json has no segments"
        assert all(s.end >= s.start >= 0 for s in r.segments)
        assert _words(" ".join(s.text for s in r.segments)) == got
        if getattr(r, "language", None):
            assert r.language.lower() in ("en", "english")


def test_unknown_model(client):
    with pytest.raises(openai.NotFoundError) as ei:
        client.chat.completions.create(model="no-such-model-xyz", messages=MESSAGES, max_tokens=4)
    body = ei.value.body
    assert isinstance(body, dict) and body.get("message") and body.get("type"), body  # {"error": {"message", "type", ..}}
    with pytest.raises(openai.NotFoundError):
        client.embeddings.create(model="no-such-model-xyz", input=["x"])


def test_wrong_key(svc):
    with openai.OpenAI(base_url=svc.base_url, api_key="wrong-key", max_retries=0, timeout=60) as bad:
        with pytest.raises(openai.AuthenticationError) as ei:
            bad.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=4)
        assert isinstance(ei.value.body, dict) and ei.value.body.get("message"), ei.value.body
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_cancelled_stream(svc, client):
    # a long answer, abandoned after its first chunk: the service stays healthy, the next request is answered,
    # and the worker stops generating (its in-flight count goes back to 0 long before 4096 tokens could be made)
    stream = client.chat.completions.create(
        model=CHAT_MODEL, messages=[{"role": "user", "content": "Write a very long story about a dragon who learns to cook."}],
        max_tokens=4096, temperature=0, stream=True)
    first = next(iter(stream))
    assert first.object == "chat.completion.chunk"
    stream.close()
    r = client.chat.completions.create(model=CHAT_MODEL, messages=MESSAGES, max_tokens=8, temperature=0)
    assert r.choices[0].message.content.strip()
    wait_for(lambda: _inflight(svc) == 0, timeout=90, interval=0.2,
             message="the worker kept generating for a closed stream")
    assert svc.proc.poll() is None
