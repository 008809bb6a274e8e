"""Speech and Pipelines through the real service (run.py --pools hf): audio and images travel through
shared memory, StreamTranscribe through the facade's bidi path (never dropping audio), bad input gives
INVALID_ARGUMENT and the worker stays up."""
from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from protos import pythonml_pb2 as X
from protos import pythonml_pb2_grpc as XG
from tests.service import start_service
from tests.test_speech_worker import AUDIO, CLIPS, WER_BOUND, pcm_s16, reference, wer

pytestmark = [pytest.mark.slow, pytest.mark.integration]
IMG = (Path(__file__).parent / "assets" / "images" / "happyfish.jpg").read_bytes()


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    from tests.test_pipelines_fixtures import build_vit_classifier
    models = tmp_path_factory.mktemp("models")
    build_vit_classifier(models / "tiny-vit")
    s = start_service(args=["--pools", "hf", "--cuda", "off", "--model-dir", str(models)], wait_service="")
    yield s
    s.stop()


def hf_pids(svc):
    st = XG.StatsStub(svc.channel()).GetStats(X.StatsRequest(), timeout=10)
    return sorted(w.pid for w in st.workers if w.pool == "hf")


@pytest.mark.parametrize("name", CLIPS)
def test_transcribe_through_shared_memory(svc, name):
    stub = XG.SpeechStub(svc.channel())
    r = stub.Transcribe(X.TranscribeRequest(audio=(AUDIO / f"{name}.wav").read_bytes()), timeout=120)
    w = wer(reference(name), r.text)
    print(f"\nservice {name}: WER {w:.3f} rtf {r.processing_s / r.duration_s:.3f} {r.text!r}")
    assert w <= WER_BOUND and r.segments and r.language == "en"
    st = XG.StatsStub(svc.channel()).GetStats(X.StatsRequest(), timeout=10)
    assert st.shm_slots_free == st.shm_slots_total   # the slot came back


def test_stream_transcribe(svc):
    name = CLIPS[1]
    pcm, rate = pcm_s16(name)
    step = rate // 5 * 2     # 0.2 s chunks: many more than max_pending; none may be dropped
    before = XG.StatsStub(svc.channel()).GetStats(X.StatsRequest(), timeout=10).dropped_stream_frames

    def chunks():
        yield X.AudioChunk(pcm=pcm[:step], sample_rate=rate, encoding="pcm_s16le", metadata={"silence_s": "2"})
        for i in range(step, len(pcm), step):
            yield X.AudioChunk(pcm=pcm[i:i + step])
        yield X.AudioChunk(end=True)

    ups = list(XG.SpeechStub(svc.channel()).StreamTranscribe(chunks(), timeout=180))
    n = 2 + (len(pcm) - step + step - 1) // step
    assert [u.chunk_index for u in ups] == list(range(n))
    assert any(not u.is_final and u.text for u in ups)
    final = " ".join(u.text for u in ups if u.is_final)
    print(f"\nservice stream: WER {wer(reference(name), final):.3f} {final!r}")
    assert wer(reference(name), final) <= WER_BOUND
    assert abs(ups[-1].audio_received_s - 7.1) < 0.02
    assert XG.StatsStub(svc.channel()).GetStats(X.StatsRequest(), timeout=10).dropped_stream_frames == before


def test_stream_closed_without_end_chunk_still_gets_the_final_transcript(svc):
    name = CLIPS[0]
    pcm, rate = pcm_s16(name)
    step = rate  # 0.5 s chunks of s16 samples

    def chunks():  # no end chunk: the client just closes its side
        yield X.AudioChunk(pcm=pcm[:step], sample_rate=rate, encoding="pcm_s16le", metadata={"silence_s": "5"})
        for i in range(step, len(pcm), step):
            yield X.AudioChunk(pcm=pcm[i:i + step])

    ups = list(XG.SpeechStub(svc.channel()).StreamTranscribe(chunks(), timeout=180))
    assert ups[-1].is_final
    final = " ".join(u.text for u in ups if u.is_final)
    assert wer(reference(name), final) <= WER_BOUND, final


@pytest.mark.parametrize("req,needle", [
    (X.TranscribeRequest(audio=b""), "audio is empty"),
    (X.TranscribeRequest(audio=b"definitely not audio" * 10), "are not a WAV file"),
    (X.TranscribeRequest(audio=IMG), "got a JPEG image"),
    (X.TranscribeRequest(audio=b"\x00\x00" * 800, encoding="pcm_s16le", sample_rate=4000), "outside the supported"),
])
def test_bad_audio(svc, req, needle):
    pids = hf_pids(svc)
    with pytest.raises(grpc.RpcError) as ei:
        XG.SpeechStub(svc.channel()).Transcribe(req, timeout=60)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and needle in ei.value.details()
    assert hf_pids(svc) == pids


def test_pipelines_run(svc):
    stub = XG.PipelinesStub(svc.channel())
    r = stub.Run(X.PipelineRequest(model="all-MiniLM-L6-v2", pipeline_type="tokenization",
                                   inputs=[X.PipelineInput(text="Hello world")]), timeout=60)
    assert list(r.outputs[0].tokens) == ["[CLS]", "hello", "world", "[SEP]"]
    r = stub.Run(X.PipelineRequest(model="tiny-vit", pipeline_type="image-classification",
                                   inputs=[X.PipelineInput(image=IMG), X.PipelineInput(image=IMG)]), timeout=60)
    assert len(r.outputs) == 2 and r.outputs[0].labels[0].label in ("cat", "dog", "fish")
    with pytest.raises(grpc.RpcError) as ei:
        stub.Run(X.PipelineRequest(model="tiny-vit", pipeline_type="image-classification",
                                   inputs=[X.PipelineInput(image=(AUDIO / "kitchen_lights.wav").read_bytes())]),
                 timeout=60)
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "where an image was expected" in ei.value.details()
