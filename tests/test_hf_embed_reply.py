"""workers/hf/handlers/embeddings.encode_reply: the GenerateEmbeddings reply written from float32 rows is
byte for byte what protobuf serialises from the same values, and parses back to them."""
from __future__ import annotations

import numpy as np
import pytest

from protos import ml_inference_pb2 as ML
from workers.hf.handlers.embeddings import encode_reply


def _protobuf(vecs) -> bytes:
    resp = ML.GeneratedEmbeddingsResponse()
    for v in vecs:
        resp.embeddings.add().values.extend(v.tolist())
    return resp.SerializeToString()


@pytest.mark.parametrize("shape", [(1, 384), (3, 384), (2, 1), (2, 31), (2, 32), (1, 1024), (1, 0), (0, 0)])
def test_the_bytes_are_protobufs_own(shape):
    vecs = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert encode_reply(vecs) == _protobuf(vecs)


@pytest.mark.parametrize("tokens", [0, 1, 127, 128, 300000])
def test_prompt_tokens_follow_as_protobuf_writes_them(tokens):
    vecs = np.random.default_rng(1).standard_normal((2, 8)).astype(np.float32)
    want = ML.GeneratedEmbeddingsResponse.FromString(_protobuf(vecs))
    want.prompt_tokens = tokens
    assert encode_reply(vecs, tokens) == want.SerializeToString()


def test_special_values_and_float64_rows_survive():
    vecs = np.array([[np.nan, np.inf, -np.inf, -0.0, 1e-45, 3.4e38]], dtype=np.float64)
    out = ML.GeneratedEmbeddingsResponse.FromString(encode_reply(vecs))
    got = np.array(out.embeddings[0].values, dtype=np.float32)
    assert encode_reply(vecs) == _protobuf(vecs.astype(np.float32))
    np.testing.assert_array_equal(got, vecs[0].astype(np.float32))
