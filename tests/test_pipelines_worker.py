"""Every pipeline type of the registry through the hf worker's real load path (LoadModel with a local
path) and Pipelines/Run, each with a tiny random-weight model built by the test
(tests/test_pipelines_fixtures.py); tokenization also with the packaged all-MiniLM-L6-v2.
Inputs' bytes are packed exactly as the facade packs them (common.payload.pack_refs)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tests.test_pipelines_fixtures as F
from common.payload import pack_refs
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from tests.test_hf_fixtures import make_worker
from workers.context import WorkerError, make_test_context
from workers.hf.pipelines import registry

ASSETS = Path(__file__).parent / "assets"
IMG = (ASSETS / "images" / "happyfish.jpg").read_bytes()
WAV = (ASSETS / "audio" / "kitchen_lights.wav").read_bytes()

BUILDERS = {"image-classification": F.build_vit_classifier, "image-text-embeddings": F.build_clip,
            "zero-shot-classification": F.build_nli, "text-ranking": F.build_cross_encoder,
            "translation": F.build_t5, "image-to-text": F.build_captioner, "text-to-speech": F.build_vits,
            "audio-classification": F.build_clap}


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("pipelines")


@pytest.fixture(scope="module")
def worker(models_root):
    # the test's models live in a --model-dir: only the model folders can be loaded (common/model_access)
    return make_worker(threads=2, model_dirs=[str(models_root)])


@pytest.fixture(scope="module")
def models(models_root):
    return {pt: str(b(models_root / pt.replace("-", "_"))) for pt, b in BUILDERS.items()}


def load(worker, model_id, pipeline_type, **options):
    ctx, _ = make_test_context("x", ML.LoadModelRequest(model_id=model_id, pipeline_type=pipeline_type,
                                                        options=options).SerializeToString())
    return ML.LoadModelResponse.FromString(worker.load_model(ctx))


def run(worker, model, pipeline_type, inputs, options=None, labels=()):
    req = X.PipelineRequest(model=model, pipeline_type=pipeline_type, inputs=inputs, options=options or {},
                            candidate_labels=list(labels))
    blob = pack_refs(req, "inputs")
    ctx, _ = make_test_context("pythonml.v1.Pipelines/Run", req.SerializeToString(), frame=blob)
    return X.PipelineResponse.FromString(worker.run_pipeline(ctx))


def test_registry_covers_every_type_once():
    names = registry.names()
    assert len(names) == len(set(names))
    for pt in BUILDERS:
        assert registry.lookup(pt).kind == "run"
    assert registry.lookup("whisper").name == "automatic-speech-recognition"
    assert registry.lookup("clap").name == "audio-classification"
    with pytest.raises(WorkerError) as ei:
        registry.require("text-to-image")
    assert ei.value.code == "UNIMPLEMENTED"


def test_tokenization_with_packaged_minilm(worker):
    r = run(worker, "all-MiniLM-L6-v2", "tokenization", [X.PipelineInput(text="Hello world"),
                                                        X.PipelineInput(text="tokenize me")])
    a, b = r.outputs
    assert list(a.tokens) == ["[CLS]", "hello", "world", "[SEP]"] and list(a.token_ids) == [101, 7592, 2088, 102]
    assert list(a.offsets) == [0, 0, 0, 5, 6, 11, 0, 0]
    assert b.tokens[0] == "[CLS]" and r.pipeline_type == "tokenization"


def test_image_classification(worker, models):
    m = models["image-classification"]
    assert load(worker, m, "image-classification").success
    r = run(worker, m, "", [X.PipelineInput(image=IMG), X.PipelineInput(image=IMG)], {"top_k": "2"})
    assert len(r.outputs) == 2
    for o in r.outputs:
        assert len(o.labels) == 2 and {l.label for l in o.labels} <= {"cat", "dog", "fish"}
        assert o.labels[0].score >= o.labels[1].score
    assert r.outputs[0].labels[0].label == r.outputs[1].labels[0].label   # same image, same answer


def test_clip_embeddings_similarity_and_zero_shot(worker, models):
    m = models["image-text-embeddings"]
    load(worker, m, "clip")
    r = run(worker, m, "image-text-embeddings",
            [X.PipelineInput(text="the quick brown fox"), X.PipelineInput(image=IMG), X.PipelineInput(text="gold")],
            labels=["fox", "dog"])
    t1, im, t2 = r.outputs
    assert [o.kind for o in r.outputs] == ["text", "image", "text"]
    v = {k: np.array(o.embedding) for k, o in zip("aib", r.outputs)}
    assert len(v["a"]) == 16 and all(abs(np.linalg.norm(x) - 1) < 1e-4 for x in v.values())
    assert np.allclose(im.scores, [v["a"] @ v["i"], v["b"] @ v["i"]], atol=1e-5)
    assert [l.label for l in im.labels] and abs(sum(l.score for l in im.labels) - 1) < 1e-4


def test_zero_shot_classification(worker, models):
    m = models["zero-shot-classification"]
    load(worker, m, "zero-shot-classification")
    r = run(worker, m, "zero-shot-classification", [X.PipelineInput(text="the quick brown fox")],
            {"candidate_labels": "animal, city, number"})
    labels = r.outputs[0].labels
    assert sorted(l.label for l in labels) == ["animal", "city", "number"]
    assert abs(sum(l.score for l in labels) - 1) < 1e-4
    with pytest.raises(WorkerError) as ei:
        run(worker, m, "zero-shot-classification", [X.PipelineInput(text="no labels")])
    assert ei.value.code == "INVALID_ARGUMENT" and "candidate labels" in ei.value.message


def test_zero_shot_needs_an_nli_model(worker, models):
    with pytest.raises(WorkerError) as ei:
        load(worker, models["text-ranking"] + "/", "zero-shot-classification")
    assert ei.value.code == "FAILED_PRECONDITION" and "entailment" in ei.value.message


def test_cross_encoder_rerank(worker, models):
    m = models["text-ranking"]
    load(worker, m, "rerank")
    docs = ["the quick brown fox", "all that glitters is not gold", "to be or not to be"]
    r = run(worker, m, "text-ranking", [X.PipelineInput(text="fox", role="query")] +
            [X.PipelineInput(text=d) for d in docs])
    o = r.outputs[0]
    assert len(o.scores) == 3 and all(0 <= s <= 1 for s in o.scores)
    order = [int(l.label) for l in o.labels]
    assert sorted(order) == [0, 1, 2] and o.scores[order[0]] == max(o.scores)


def test_translation(worker, models):
    m = models["translation"]
    load(worker, m, "translation")
    r = run(worker, m, "translation", [X.PipelineInput(text="the quick brown fox"), X.PipelineInput(text="gold")],
            {"max_new_tokens": "6"})
    assert len(r.outputs) == 2 and all(isinstance(o.text, str) for o in r.outputs)


def test_image_to_text(worker, models):
    m = models["image-to-text"]
    load(worker, m, "image-to-text")
    r = run(worker, m, "image-to-text", [X.PipelineInput(image=IMG)], {"max_new_tokens": "5"})
    assert r.outputs[0].kind == "image" and r.outputs[0].text   # random weights: some text of <= 5 tokens


def test_text_to_speech(worker, models):
    m = models["text-to-speech"]
    load(worker, m, "text-to-speech")
    a = run(worker, m, "tts", [X.PipelineInput(text="hello world")]).outputs[0]
    b = run(worker, m, "tts", [X.PipelineInput(text="hello world")]).outputs[0]
    x = np.frombuffer(a.audio, "<f4")
    assert a.sample_rate == 16000 and x.size > 100 and np.isfinite(x).all()
    assert a.audio == b.audio   # seeded: repeatable


def test_clap_audio_classification(worker, models):
    m = models["audio-classification"]
    load(worker, m, "clap")
    r = run(worker, m, "audio-classification", [X.PipelineInput(audio=WAV)], labels=["speech", "music", "dog"])
    o = r.outputs[0]
    assert sorted(l.label for l in o.labels) == ["dog", "music", "speech"] and len(o.embedding) == 16
    # an image where audio is expected: precise INVALID_ARGUMENT, and the worker keeps serving
    with pytest.raises(WorkerError) as ei:
        run(worker, m, "audio-classification", [X.PipelineInput(audio=IMG)], labels=["a"])
    assert ei.value.code == "INVALID_ARGUMENT" and "inputs[0]: got a JPEG image" in ei.value.message
    assert run(worker, m, "audio-classification", [X.PipelineInput(audio=WAV)], labels=["a", "b"]).outputs


def test_audio_where_an_image_is_expected(worker, models):
    with pytest.raises(WorkerError) as ei:
        run(worker, models["image-classification"], "image-classification", [X.PipelineInput(image=WAV)])
    assert ei.value.code == "INVALID_ARGUMENT" and "got a WAV audio file where an image was expected" in ei.value.message


@pytest.mark.parametrize("inputs,needle", [
    ([], "inputs is empty"),
    ([X.PipelineInput(text="a", image=IMG)], "set exactly one of text, image, audio"),
    ([X.PipelineInput(text="a")], "takes image inputs, got text"),
])
def test_bad_pipeline_input(worker, models, inputs, needle):
    with pytest.raises(WorkerError) as ei:
        run(worker, models["image-classification"], "image-classification", inputs)
    assert ei.value.code == "INVALID_ARGUMENT" and needle in ei.value.message


def test_wrong_type_for_loaded_model_and_unknown_type(worker, models):
    with pytest.raises(WorkerError) as ei:
        run(worker, models["image-classification"], "translation", [X.PipelineInput(text="a")])
    assert ei.value.code == "FAILED_PRECONDITION" and "loaded as image-classification" in ei.value.message
    with pytest.raises(WorkerError) as ei:
        run(worker, models["image-classification"], "object-detection-3d", [X.PipelineInput(text="a")])
    assert ei.value.code == "UNIMPLEMENTED" and "image-classification" in ei.value.message


def test_auto_detect_pipeline_from_config(worker, models):
    for pt in ("image-classification", "image-text-embeddings", "image-to-text", "text-to-speech",
               "audio-classification", "translation"):
        res = worker.resolver.resolve(models[pt])
        assert worker._entry_for("", res).name == pt
