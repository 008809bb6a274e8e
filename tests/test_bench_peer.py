"""The benchmarks' single-process peer (bench/peers/) answers like the service: the same pose stream and
the same embedding, through its own grpc.aio server and through run.py; a handler's error keeps its status."""
import os

import cv2
import grpc
import numpy as np
import pytest

from bench.peers.launch import start_peer
from protos import ml_inference_pb2 as pb
from protos import ml_inference_pb2_grpc as pbg
from tests.service import start_service

pytestmark = [pytest.mark.integration, pytest.mark.slow]

IMAGE = os.path.join(os.path.dirname(__file__), "assets", "images", "basketball1.png")
SENTENCE = "The quick brown fox jumps over the lazy dog."


@pytest.fixture(scope="module")
def servers():
    with start_peer("vision,hf") as peer, start_service(
            ["--pools", "vision,hf", "--cuda", "off", "--worker-threads", "2"], wait_service="ml.MediapipeService") as svc:
        yield {"peer": peer.address, "ours": svc.address}


def pose_stream(address: str) -> list:
    rgb = np.ascontiguousarray(cv2.cvtColor(cv2.imread(IMAGE), cv2.COLOR_BGR2RGB))
    h, w = rgb.shape[:2]
    frames = (pb.VideoFrame(frame_data=rgb.tobytes(), format="rgb", width=w, height=h, frame_number=n)
              for n in range(3))
    with grpc.insecure_channel(address) as ch:
        return list(pbg.MediapipeServiceStub(ch).StreamPoseTracking(frames, timeout=60))


def embedding(address: str) -> np.ndarray:
    with grpc.insecure_channel(address) as ch:
        r = pbg.TransformersServiceStub(ch).GenerateEmbeddings(
            pb.GenerateEmbeddingsRequest(texts=[SENTENCE], model="all-MiniLM-L6-v2"), timeout=120)
    return np.array(r.embeddings[0].values)


def test_pose_stream_same_answer(servers):
    ours, peer = pose_stream(servers["ours"]), pose_stream(servers["peer"])
    assert [r.frame_number for r in peer] == [0, 1, 2]
    assert len(ours[-1].poses) == len(peer[-1].poses) == 1
    a = [(p.x, p.y) for p in ours[-1].poses[0].landmarks]
    b = [(p.x, p.y) for p in peer[-1].poses[0].landmarks]
    assert len(a) == 33 and np.allclose(a, b, atol=1e-4)


def test_embedding_same_answer(servers):
    ours, peer = embedding(servers["ours"]), embedding(servers["peer"])
    assert ours.shape == peer.shape == (384,)
    assert np.allclose(ours, peer, atol=1e-5)


def test_error_status_kept(servers):
    bad = pb.VideoFrame(frame_data=b"\x00" * 10, format="rgb", width=640, height=480)
    for address in (servers["ours"], servers["peer"]):
        with grpc.insecure_channel(address) as ch, pytest.raises(grpc.RpcError) as err:
            list(pbg.MediapipeServiceStub(ch).StreamPoseTracking(iter([bad]), timeout=30))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, address


def test_summary_table_picks_ratios():
    from bench.peers import summary
    rows = [{"metric": "pose FPS via service vs in-process (rgb)", "ratio": 0.8},
            {"metric": "pose fps while an LLM streams / alone (ours)", "ratio": 0.9},
            {"metric": "pose fps while an LLM streams / alone (ours, --cpu-policy off)", "ratio": 0.7},
            {"metric": "pose FPS via single-process peer vs in-process (rgb)", "ratio": 0.9},
            {"metric": "p50 no-op, 1 clients (ms)", "ratio": 3.0},
            {"metric": "p50 no-op via single-process peer, 32 clients (ms)", "ratio": float("nan")}]
    got = {t["label"]: (t["ours"], t["off"], t["peer"]) for t in summary.table(rows)}
    assert got == {"pose stream 640x480 (rgb), ratio to in-process": ([0.8], [None], [0.9]),
                   "pose fps while an LLM streams / alone": ([0.9], [0.7], [None]),
                   "no-op p50, ratio to bare gRPC (1 client / 32 clients)": ([3.0, None], [None, None], [None, None])}
    md = "\n".join(summary.markdown(rows))
    assert "| pose stream 640x480 (rgb), ratio to in-process | 0.80 | - | 0.90 | >= 0.9 | 0.86 | 0.87 |" in md
    assert "| pose fps while an LLM streams / alone | 0.90 | 0.70 | - | >= 0.95 |" in md
    assert "| 3.00 / - | - / - | - / - |" in md
    assert summary.markdown([{"metric": "other", "ratio": 1.0}]) == []
