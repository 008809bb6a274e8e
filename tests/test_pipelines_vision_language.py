"""Vision-language pipelines through the hf worker's real load path (LoadModel / auto-load with a local
path) and Pipelines/Run + RunStream, each on a tiny model the test builds and saves
(tests/test_pipelines_vision_language_fixtures.py): florence2 (a scripted decoder, so boxes, quad boxes
and captions are known exactly), image-text-to-text (LLaVA-style chat, with and without a chat
template) and janus (understanding). The last tests run the same through run.py (facade -> broker ->
worker) and the CLI verbs."""
from __future__ import annotations

import io
from pathlib import Path

import pytest

import tests.test_pipelines_vision_language_fixtures as V
from common.payload import pack_refs
from protos import ml_inference_pb2 as ML
from protos import pythonml_pb2 as X
from tests.test_hf_fixtures import make_worker
from workers.context import WorkerError, make_test_context
from workers.hf.pipelines import registry, vl_chat

ASSETS = Path(__file__).parent / "assets"
IMG = (ASSETS / "images" / "happyfish.jpg").read_bytes()        # 259 x 194
WAV = (ASSETS / "audio" / "kitchen_lights.wav").read_bytes()
W, H = 259, 194
OD_SCRIPT = "<s>fox<loc_100><loc_200><loc_300><loc_400>dog<loc_500><loc_600><loc_700><loc_800></s>"
OCR_SCRIPT = "<s>HELLO<loc_100><loc_200><loc_300><loc_200><loc_300><loc_400><loc_100><loc_400></s>"


def px(loc: int, size: int) -> float:
    """Florence-2's dequantisation: the centre of bin `loc` of 1000, in whole pixels."""
    return float(int((loc + 0.5) * size / 1000))


@pytest.fixture(scope="module")
def models_root(tmp_path_factory):
    return tmp_path_factory.mktemp("vl")


@pytest.fixture(scope="module")
def models(models_root):
    return {"od": str(V.build_florence2(models_root / "florence_od", OD_SCRIPT)),
            "ocr": str(V.build_florence2(models_root / "florence_ocr", OCR_SCRIPT)),
            "llava": str(V.build_llava(models_root / "llava")),
            "plain": str(V.build_llava(models_root / "llava_plain", chat_template=False)),
            "janus": str(V.build_janus(models_root / "janus"))}


@pytest.fixture(scope="module")
def worker(models_root):
    return make_worker(threads=2, model_dirs=[str(models_root)])


def load(worker, model_id, pipeline_type, **options):
    ctx, _ = make_test_context("x", ML.LoadModelRequest(model_id=model_id, pipeline_type=pipeline_type,
                                                        options=options).SerializeToString())
    return ML.LoadModelResponse.FromString(worker.load_model(ctx))


def request(model, pipeline_type, inputs, options=None) -> X.PipelineRequest:
    return X.PipelineRequest(model=model, pipeline_type=pipeline_type, inputs=inputs, options=options or {})


def run(worker, model, pipeline_type, inputs, options=None):
    req = request(model, pipeline_type, inputs, options)
    ctx, _ = make_test_context("pythonml.v1.Pipelines/Run", req.SerializeToString(), frame=pack_refs(req, "inputs"))
    return X.PipelineResponse.FromString(worker.run_pipeline(ctx))


def run_stream(worker, model, pipeline_type, inputs, options=None):
    """(last message, the partial messages before it) of Pipelines/RunStream."""
    req = request(model, pipeline_type, inputs, options)
    ctx, parts = make_test_context("pythonml.v1.Pipelines/RunStream", req.SerializeToString(),
                                   frame=pack_refs(req, "inputs"))
    last = X.PipelineResponse.FromString(worker.run_pipeline_stream(ctx))
    return last, [X.PipelineResponse.FromString(p) for p in parts]


def error_of(fn, *args, **kw) -> WorkerError:
    with pytest.raises(WorkerError) as ei:
        fn(*args, **kw)
    return ei.value


# ---- registry ------------------------------------------------------------------------------------------
def test_registry_names_upstream_and_task_names():
    for name, entry in [("Florence2", "florence2"), ("florence-2", "florence2"), ("Janus", "janus"),
                        ("Multimodal", "image-text-to-text"), ("image-text-to-text", "image-text-to-text"),
                        ("image_text_to_text", "image-text-to-text"), ("vlm", "image-text-to-text"),
                        ("image-to-text", "image-to-text")]:
        assert registry.lookup(name).name == entry, name
    assert "image-text-to-text" not in registry.lookup("image-to-text").aliases
    e = error_of(registry.require, "text-to-image")
    assert e.code == "UNIMPLEMENTED" and "'text-to-image'" in e.message and "florence2" in e.message


def test_detect_and_refine_pick_the_model_family(worker, models):
    def entry(key, pt=""):
        return worker._entry_for(pt, worker.resolver.resolve(models[key])).name
    assert entry("od") == "florence2" and entry("janus") == "janus"
    assert entry("llava") == "image-text-to-text" and entry("plain") == "image-to-text"
    for generic in ("image-text-to-text", "image-to-text", "Multimodal"):
        assert entry("od", generic) == "florence2" and entry("janus", generic) == "janus"
    assert entry("llava", "image-to-text") == "image-to-text"    # no family entry: the type asked for
    assert entry("od", "image-classification") == "image-classification"   # not a type florence2 serves


# ---- florence2 -----------------------------------------------------------------------------------------
def test_florence2_od_boxes_in_pixels(worker, models):
    assert load(worker, models["od"], "Florence2").success
    r = run(worker, models["od"], "florence2", [X.PipelineInput(image=IMG), X.PipelineInput(text="<OD>")])
    assert r.pipeline_type == "florence2" and r.done and len(r.outputs) == 1
    o = r.outputs[0]
    assert (o.kind, o.task) == ("image", "<OD>")
    assert [b.label for b in o.boxes] == ["fox", "dog"]
    assert [(b.x_min, b.y_min, b.x_max, b.y_max) for b in o.boxes] == [
        (px(100, W), px(200, H), px(300, W), px(400, H)), (px(500, W), px(600, H), px(700, W), px(800, H))]
    assert o.text == OD_SCRIPT.replace("<s>", "").replace("</s>", "")   # the generated text itself
    assert not o.quad_boxes and not o.polygons


def test_florence2_task_forms_and_one_output_per_image(worker, models):
    m = models["od"]
    by_option = run(worker, m, "florence2", [X.PipelineInput(image=IMG), X.PipelineInput(image=IMG)], {"task": "od"})
    assert [o.task for o in by_option.outputs] == ["<OD>", "<OD>"]
    assert by_option.outputs[0].boxes == by_option.outputs[1].boxes
    dense = run(worker, m, "florence2", [X.PipelineInput(image=IMG)], {"task": "DENSE_REGION_CAPTION"}).outputs[0]
    assert dense.task == "<DENSE_REGION_CAPTION>" and [b.label for b in dense.boxes] == ["fox", "dog"]
    grounding = run(worker, m, "florence2", [X.PipelineInput(image=IMG),
                                             X.PipelineInput(text="<CAPTION_TO_PHRASE_GROUNDING>a fox and a dog")])
    g = grounding.outputs[0]
    assert g.task == "<CAPTION_TO_PHRASE_GROUNDING>" and [b.label for b in g.boxes] == ["fox", "dog"]
    same = run(worker, m, "florence2", [X.PipelineInput(image=IMG), X.PipelineInput(text="a fox and a dog")],
               {"task": "<CAPTION_TO_PHRASE_GROUNDING>"})
    assert same.outputs[0].boxes == g.boxes
    caption = run(worker, m, "florence2", [X.PipelineInput(image=IMG)]).outputs[0]     # no task: <CAPTION>
    assert caption.task == "<CAPTION>" and caption.text == OD_SCRIPT[3:-4] and not caption.boxes


def test_florence2_ocr_with_region_quad_boxes(worker, models):
    m = models["ocr"]
    load(worker, m, "florence-2")
    o = run(worker, m, "florence2", [X.PipelineInput(image=IMG), X.PipelineInput(text="<OCR_WITH_REGION>")]).outputs[0]
    assert o.task == "<OCR_WITH_REGION>" and len(o.quad_boxes) == 1 and not o.boxes
    q = o.quad_boxes[0]
    assert q.label == "HELLO"
    assert list(q.points) == [px(100, W), px(200, H), px(300, W), px(200, H), px(300, W), px(400, H),
                              px(100, W), px(400, H)]
    ocr = run(worker, m, "florence2", [X.PipelineInput(image=IMG), X.PipelineInput(text="<OCR>")]).outputs[0]
    assert ocr.task == "<OCR>" and ocr.text.startswith("HELLO<loc_100>") and not ocr.quad_boxes


def test_generic_types_on_a_florence_folder_answer_as_florence2(worker, models):
    for pt in ("image-text-to-text", "image-to-text"):
        r = run(worker, models["od"], pt, [X.PipelineInput(image=IMG), X.PipelineInput(text="<OD>")])
        assert r.pipeline_type == "florence2" and [b.label for b in r.outputs[0].boxes] == ["fox", "dog"]


@pytest.mark.parametrize("inputs,options,needle", [
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="<FOO>")], {}, "florence2 task '<FOO>' is unknown"),
    ([X.PipelineInput(image=IMG)], {"task": "segment everything"}, "task '<SEGMENT_EVERYTHING>' is unknown"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="<OD>a fox")], {}, "task <OD> takes no input text"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="<CAPTION_TO_PHRASE_GROUNDING>")], {},
     "task <CAPTION_TO_PHRASE_GROUNDING> needs its input"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="<CAPTION>")], {"task": "<OD>"},
     "option task is <OD> but inputs[1] starts with <CAPTION>"),
    ([X.PipelineInput(text="<OD>")], {}, "florence2 needs at least one image input"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="a"), X.PipelineInput(text="b")], {},
     "at most one text input"),
    ([X.PipelineInput(audio=WAV)], {}, "inputs[0]: florence2 takes image or text inputs, got audio"),
    ([X.PipelineInput(image=WAV)], {}, "inputs[0]: got a WAV audio file where an image was expected"),
    ([X.PipelineInput(image=IMG)], {"max_new_tokens": "0"}, "max_new_tokens=0 is outside 1..4096"),
])
def test_florence2_bad_input(worker, models, inputs, options, needle):
    e = error_of(run, worker, models["od"], "florence2", inputs, options)
    assert e.code == "INVALID_ARGUMENT" and needle in e.message, e.message


def test_family_entries_refuse_other_models(worker, models):
    e = error_of(load, worker, models["llava"] + "/", "florence2")
    assert e.code == "FAILED_PRECONDITION" and "is a 'llava' model, not Florence-2" in e.message
    e = error_of(load, worker, models["od"] + "/", "janus")
    assert e.code == "FAILED_PRECONDITION" and "is a 'florence2' model, not Janus" in e.message


# ---- image-text-to-text (vision-language chat) ------------------------------------------------------------
def test_conversation_keeps_turns_and_image_positions():
    inputs = [registry.Input(0, "text", text="be brief", role="system"),
              registry.Input(1, "image", data=IMG), registry.Input(2, "text", text="what is this?"),
              registry.Input(3, "text", text="a fish", role="assistant"),
              registry.Input(4, "text", text="and this?", role="user"), registry.Input(5, "image", data=IMG)]
    msgs, images = vl_chat.conversation(registry.Call(inputs=inputs, options={}, candidate_labels=[]), "vl")
    shape = [(m["role"], [p["type"] if p["type"] == "image" else p["text"] for p in m["content"]]) for m in msgs]
    assert shape == [("system", ["be brief"]), ("user", ["image", "what is this?"]), ("assistant", ["a fish"]),
                     ("user", ["and this?", "image"])]
    assert [im.size for im in images] == [(W, H), (W, H)]


def test_vl_chat_streams_pieces_that_make_the_answer(worker, models):
    m = models["llava"]
    assert load(worker, m, "Multimodal").success
    inputs = [X.PipelineInput(text="be brief", role="system"), X.PipelineInput(image=IMG),
              X.PipelineInput(text="what is in the picture?")]
    last, parts = run_stream(worker, m, "image-text-to-text", inputs, {"max_new_tokens": "12"})
    o = last.outputs[0]
    assert last.done and last.pipeline_type == "image-text-to-text" and len(last.outputs) == 1
    assert o.kind == "text" and o.finish_reason in ("stop", "length") and 1 <= o.tokens_generated <= 12
    assert parts and all(p.delta and p.output_index == 0 and not p.done and not p.outputs for p in parts)
    assert "".join(p.delta for p in parts) == o.text
    unary = run(worker, m, "vlm", inputs, {"max_new_tokens": "12"}).outputs[0]    # greedy: the same answer
    assert (unary.text, unary.tokens_generated, unary.finish_reason) == (o.text, o.tokens_generated, o.finish_reason)
    if o.finish_reason == "length":
        assert o.tokens_generated == 12


def test_vl_chat_answer_depends_on_the_image(worker, models):
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), (255, 255, 255)).save(buf, "PNG")
    outs = {name: run(worker, models["llava"], "image-text-to-text",
                      [X.PipelineInput(image=data), X.PipelineInput(text="describe")],
                      {"max_new_tokens": "8"}).outputs[0].text for name, data in (("fish", IMG), ("white", buf.getvalue()))}
    assert outs["fish"] != outs["white"]   # the image reaches the language model


def test_vl_chat_cancel_stops_generation(worker, models):
    req = request(models["llava"], "image-text-to-text", [X.PipelineInput(image=IMG), X.PipelineInput(text="go on")],
                  {"max_new_tokens": "64"})
    ctx, parts = make_test_context("pythonml.v1.Pipelines/RunStream", req.SerializeToString(),
                                   frame=pack_refs(req, "inputs"))

    def cancel_after_first(payload):
        parts.append(payload)
        ctx.cancelled.set()
    ctx._send_partial = cancel_after_first
    e = error_of(worker.run_pipeline_stream, ctx)
    assert e.code == "CANCELLED" and 1 <= len(parts) <= 2   # stopped within a step of the cancel


def test_vl_chat_without_chat_template_reads_a_plain_prompt(worker, models):
    m = models["plain"]
    load(worker, m, "image-text-to-text")
    o = run(worker, m, "image-text-to-text", [X.PipelineInput(image=IMG), X.PipelineInput(text="describe")],
            {"max_new_tokens": "4"}).outputs[0]
    assert o.kind == "text" and 1 <= o.tokens_generated <= 4 and o.finish_reason in ("stop", "length")


@pytest.mark.parametrize("inputs,options,needle", [
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="hi", role="label")], {},
     "inputs[1]: role 'label' is not a chat role"),
    ([X.PipelineInput(text="hi"), X.PipelineInput(image=IMG, role="assistant"), X.PipelineInput(text="and?")], {},
     "inputs[1]: an image in an assistant turn"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="a fish", role="assistant")], {},
     "the conversation ends with the assistant's turn (inputs[1])"),
    ([X.PipelineInput(audio=WAV)], {}, "inputs[0]: image-text-to-text takes text or image inputs, got audio"),
    ([X.PipelineInput(image=IMG)] * 17 + [X.PipelineInput(text="count")], {},
     "17 images in one conversation; the limit is 16"),
    ([X.PipelineInput(text="the quick brown fox " * 200)], {}, "this model's context is 256 tokens"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="hi")], {"max_new_tokens": "5000"},
     "max_new_tokens=5000 is outside 1..4096"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="hi")], {"temperature": "hot"},
     "temperature='hot' is not a number"),
    ([X.PipelineInput(image=IMG), X.PipelineInput(text="hi")], {"top_p": "1.5"}, "top_p=1.5 is outside"),
])
def test_vl_chat_bad_input(worker, models, inputs, options, needle):
    e = error_of(run, worker, models["llava"], "image-text-to-text", inputs, options)
    assert e.code == "INVALID_ARGUMENT" and needle in e.message, e.message


def test_vl_chat_samples_with_temperature(worker, models):
    o = run(worker, models["llava"], "image-text-to-text", [X.PipelineInput(image=IMG), X.PipelineInput(text="hi")],
            {"max_new_tokens": "6", "temperature": "0.8", "top_p": "0.9"}).outputs[0]
    assert 1 <= o.tokens_generated <= 6 and o.finish_reason in ("stop", "length")


# ---- janus -------------------------------------------------------------------------------------------------
def test_janus_understanding_streams(worker, models):
    m = models["janus"]
    assert load(worker, m, "Janus").success
    inputs = [X.PipelineInput(image=IMG), X.PipelineInput(text="what is this?")]
    last, parts = run_stream(worker, m, "janus", inputs, {"max_new_tokens": "6"})
    o = last.outputs[0]
    assert last.pipeline_type == "janus" and o.kind == "text" and 1 <= o.tokens_generated <= 6
    assert "".join(p.delta for p in parts) == o.text
    assert run(worker, m, "image-text-to-text", inputs, {"max_new_tokens": "6"}).outputs[0].text == o.text
    e = error_of(run, worker, m, "janus", inputs, {"generation_mode": "image"})
    assert e.code == "UNIMPLEMENTED" and "janus generation_mode 'image'" in e.message


def test_unservable_pipeline_type_is_unimplemented(worker, models):
    e = error_of(run, worker, models["llava"], "text-to-image", [X.PipelineInput(text="a cat")])
    assert e.code == "UNIMPLEMENTED" and "'text-to-image'" in e.message
    e = error_of(load, worker, models["llava"], "image-to-video")
    assert e.code == "UNIMPLEMENTED" and "'image-to-video'" in e.message
    e = error_of(run, worker, models["llava"], "florence2", [X.PipelineInput(image=IMG)])
    assert e.code == "FAILED_PRECONDITION" and "loaded as image-text-to-text, not florence2" in e.message


# ---- through run.py and the CLI ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def svc(models_root, models):
    from tests.service import start_service
    s = start_service(args=["--pools", "hf", "--cuda", "off", "--model-dir", str(models_root)], wait_service="")
    yield s
    s.stop()


@pytest.mark.slow
@pytest.mark.integration
def test_service_run_and_run_stream(svc):
    import grpc

    from protos import pythonml_pb2_grpc as XG
    stub = XG.PipelinesStub(svc.channel())
    r = stub.Run(request("florence_od", "Florence2", [X.PipelineInput(image=IMG), X.PipelineInput(text="<OD>")]),
                 timeout=120)
    assert [b.label for b in r.outputs[0].boxes] == ["fox", "dog"] and r.outputs[0].boxes[0].x_max == px(300, W)
    msgs = list(stub.RunStream(request("llava", "image-text-to-text",
                                       [X.PipelineInput(image=IMG), X.PipelineInput(text="describe")],
                                       {"max_new_tokens": "8"}), timeout=120))
    *parts, last = msgs
    assert last.done and parts and "".join(p.delta for p in parts) == last.outputs[0].text
    one = list(stub.RunStream(request("florence_od", "florence2", [X.PipelineInput(image=IMG)]), timeout=120))
    assert len(one) == 1 and one[0].done and one[0].outputs[0].task == "<CAPTION>"   # nothing to stream: the answer
    with pytest.raises(grpc.RpcError) as ei:
        stub.Run(request("llava", "text-to-image", [X.PipelineInput(text="a cat")]), timeout=60)
    assert ei.value.code() == grpc.StatusCode.UNIMPLEMENTED and "'text-to-image'" in ei.value.details()
    with pytest.raises(grpc.RpcError) as ei:
        list(stub.RunStream(request("llava", "image-text-to-text", [X.PipelineInput(image=IMG, role="assistant"),
                                                                     X.PipelineInput(text="hi")]), timeout=60))
    assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "assistant turn" in ei.value.details()


@pytest.mark.slow
@pytest.mark.integration
def test_cli_verbs(svc, capsys):
    from client.cli import build_parser, channel_for
    img = str(ASSETS / "images" / "happyfish.jpg")

    def call(*argv) -> str:
        args = build_parser().parse_args([*argv, "--address", svc.address])
        assert args.func(args, channel_for(args)) == 0
        return capsys.readouterr().out
    out = call("florence2", "florence_od", img, "--task", "OD")
    assert f"fox [{px(100, W):.0f}, {px(200, H):.0f}, {px(300, W):.0f}, {px(400, H):.0f}]" in out and "dog [" in out
    out = call("florence2", "florence_ocr", img, "--task", "<OCR_WITH_REGION>")
    assert "HELLO [" in out and "quad" in out
    streamed = call("vlchat", "llava", "describe", "--image", img, "--option", "max_new_tokens=6")
    unary = call("vlchat", "llava", "describe", "--image", img, "--option", "max_new_tokens=6", "--no-stream")
    assert streamed == unary and streamed.strip() != ""
    assert call("janus", "janus", "what is this?", "--image", img, "--option", "max_new_tokens=4").strip()
    out = call("pipeline", "florence2", "florence_od", img, "<OD>")
    assert "box fox [" in out
