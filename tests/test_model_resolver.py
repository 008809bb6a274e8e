"""The one model resolver (common/model_resolver.py): every string shape the orchestrator and users send."""
from __future__ import annotations

from pathlib import Path

import pytest

from common.model_resolver import LITERT, LITERT_LM, TRANSFORMERS, LocalResolver, match_builtin, repo_id_of
from common.placement import pool_for_load
from common.status import StatusError
from protos import ml_inference_pb2 as ML
from workers.context import make_test_context


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A working directory laid out like the orchestrator's: models/<org>/<repo>/<file>."""
    monkeypatch.chdir(tmp_path)
    tiny = tmp_path / "models" / "acme" / "tiny-lm"
    tiny.mkdir(parents=True)
    (tiny / "config.json").write_text("{}")
    (tiny / "model.safetensors").write_bytes(b"\0" * 16)
    lite = tmp_path / "models" / "acme" / "detector"
    lite.mkdir(parents=True)
    (lite / "model.tflite").write_bytes(b"\0\0\0\0TFL3")
    bundle = tmp_path / "models" / "google" / "gemma-3n-litert"
    bundle.mkdir(parents=True)
    (bundle / "gemma.litertlm").write_bytes(b"x")
    return tmp_path


@pytest.mark.parametrize("s,key", [
    ("SmolLM2-135M-Instruct", "smollm2"),
    ("HuggingFaceTB/SmolLM2-135M-Instruct", "smollm2"),
    ("models/HuggingFaceTB/SmolLM2-135M-Instruct/model.safetensors", "smollm2"),
    ("/srv/orchestrator/models/huggingfacetb/smollm2-135m-instruct/model.safetensors", "smollm2"),
    ("models/sentence-transformers/all-MiniLM-L6-v2/model.safetensors", "minilm"),
    ("sentence-transformers/all-MiniLM-L6-v2", "minilm"),
    ("all-minilm-l6-v2", "minilm"),
    ("tiny.en", "whisper-tiny.en"),
    ("models/openai/whisper-tiny.en/model.bin", "whisper-tiny.en"),
    ("models/acme/tiny-lm/model.safetensors", None),
    ("SmolLM2", None),
])
def test_builtin_match_by_alias_or_org_repo_inside_a_path(s, key):
    b = match_builtin(s)
    assert (b.key if b else None) == key


def test_builtins_resolve_from_cache_paths_without_the_files(cache):
    r = LocalResolver()
    for s in ("models/HuggingFaceTB/SmolLM2-135M-Instruct/model.safetensors",
              "models/sentence-transformers/all-MiniLM-L6-v2/model.safetensors"):
        res = r.local(s)
        assert res is not None and res.source == "builtin" and res.family == TRANSFORMERS, s


def test_local_models_by_cache_path_folder_and_absolute_path(cache):
    r = LocalResolver()
    folder = cache / "models" / "acme" / "tiny-lm"
    for s in ("models/acme/tiny-lm/model.safetensors", "models/acme/tiny-lm", "acme/tiny-lm",
              str(folder / "model.safetensors"), str(folder), str(folder / "config.json")):
        res = r.local(s)
        assert res is not None and res.source == "local" and res.family == TRANSFORMERS, s
        assert res.path.resolve() == folder.resolve(), s
    res = r.local("models/acme/detector/model.tflite")
    assert res.family == LITERT and res.path.name == "model.tflite"
    res = r.local("models/google/gemma-3n-litert")
    assert res.family == LITERT_LM and res.path.suffix == ".litertlm"
    assert r.local("models/acme/nothing-here/model.safetensors") is None


def test_working_dir_models_can_be_turned_off(cache):
    assert LocalResolver(cwd_models=False).local("models/acme/tiny-lm/model.safetensors") is None
    with pytest.raises(StatusError) as ei:
        LocalResolver(cwd_models=False).local(str(cache / "models" / "acme" / "tiny-lm"))
    assert ei.value.code == "PERMISSION_DENIED"


def test_files_outside_the_model_folders_are_never_reached(cache):
    (cache / "elsewhere").mkdir()
    (cache / "elsewhere" / "config.json").write_text("{}")
    r = LocalResolver()
    assert r.local("elsewhere") is None            # relative to the working directory, but not in models/
    with pytest.raises(StatusError) as ei:
        r.local(str(cache / "elsewhere"))
    assert ei.value.code == "PERMISSION_DENIED"
    assert r.local("models/../elsewhere") is None


def test_repo_id_of_cache_paths():
    assert repo_id_of("models/acme/tiny-lm/model.safetensors") == "acme/tiny-lm"
    assert repo_id_of("/x/models/acme/tiny-lm/sub/model.safetensors") == "acme/tiny-lm"
    assert repo_id_of("acme/tiny-lm") == "acme/tiny-lm"
    assert repo_id_of("acme/tiny-lm/model.safetensors") == "acme/tiny-lm"


def test_routing_uses_the_same_rule():
    assert pool_for_load("", "models/acme/detector/model.tflite", {}) == "litert"
    assert pool_for_load("", "models/acme/tiny-lm/model.safetensors", {}) == "hf"


def test_generate_text_on_a_tflite_or_litertlm_answers_failed_precondition(cache):
    from tests.test_hf_fixtures import make_worker
    w = make_worker()
    for model, needle in (("models/acme/detector/model.tflite", "LiteRT .tflite model"),
                          ("models/google/gemma-3n-litert", "LiteRT-LM bundle")):
        ctx, _ = make_test_context("ml.TransformersService/GenerateText",
                                   ML.TextRequest(prompt="hi", model=model).SerializeToString())
        with pytest.raises(StatusError) as ei:
            w.generate_text(ctx)
        assert ei.value.code == "FAILED_PRECONDITION" and needle in ei.value.message, ei.value.message


def test_one_copy_whichever_string_names_the_model(cache):
    """Loaded by alias, asked for by the orchestrator's cache path (and back): one load, one copy."""
    from tests.test_hf_fixtures import make_worker
    w = make_worker()
    loads = []
    w.models._on_loaded = lambda rec, version: loads.append(rec.model_id)   # what the broker would be told

    def embed(model):
        ctx, _ = make_test_context("ml.TransformersService/GenerateEmbeddings",
                                   ML.GenerateEmbeddingsRequest(texts=["a cat"], model=model).SerializeToString())
        return ML.GeneratedEmbeddingsResponse.FromString(w.generate_embeddings(ctx))
    a = embed("all-MiniLM-L6-v2")
    b = embed("models/sentence-transformers/all-MiniLM-L6-v2/model.safetensors")
    c = embed("sentence-transformers/all-MiniLM-L6-v2")
    assert loads == ["all-MiniLM-L6-v2"]
    assert len(a.embeddings[0].values) == 384
    assert list(a.embeddings[0].values) == list(b.embeddings[0].values) == list(c.embeddings[0].values)
