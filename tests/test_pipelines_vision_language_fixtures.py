"""Helpers for the vision-language pipeline tests (no tests here): tiny Florence-2, LLaVA-style chat and
Janus models built from small configs with locally made tokenizers and processors, saved with
save_pretrained. Nothing comes from a hub.

build_florence2(out, script): random vision tower and encoder, and a *scripted* BART decoder whose
greedy output is always `script` (token embeddings, attention and feed-forward outputs zeroed, one-hot
position embeddings, an LM head that maps position p to the script's token p), so the real
generate -> decode -> post_process_generation path gives known text, boxes and quad boxes.
"""
from __future__ import annotations

import json
from pathlib import Path

from tests.test_hf_fixtures import LINES   # first: it switches transformers to offline mode
from tests.test_pipelines_fixtures import _bpe_tokenizer, _mk, tiny_stack, tiny_text

# a chat template that places images where they stand in a turn (like real VLM templates)
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}IMAGE{% elif c['type'] == 'text' %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %}</s>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")

FLORENCE_D = 32            # decoder width: the scripted decoder follows at most this many positions
FLORENCE_PARSE_RULES = {"pure_text": {}, "ocr": {"AREA_THRESHOLD": 0.0}, "description_with_bboxes": {},
                        "bboxes": {}, "phrase_grounding": {"banned_grounding_tokens": []}, "polygons": {},
                        "description_with_polygons": {}, "description_with_bboxes_or_polygons": {}}


def florence_tokenizer(out: Path):
    """A byte-level BPE BartTokenizer (Florence-2's) with the 1000 <loc_N> tokens and the <image> token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BartTokenizer
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(LINES, trainer)
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
              for m in json.loads(tok.to_str())["model"]["merges"]]
    bt = BartTokenizer(vocab=tok.get_vocab(), merges=merges, extra_special_tokens={"image_token": "<image>"})
    bt.add_tokens([f"<loc_{i}>" for i in range(1000)] + ["<od>", "</od>", "<ocr>", "</ocr>", "<poly>", "</poly>",
                                                        "<sep>"])
    return bt


def build_florence2(out, script: str = "<s>fox<loc_100><loc_200><loc_300><loc_400></s>"):
    """Florence-2 (64x64 images -> 5 image tokens) whose decoder always writes `script` (see module doc)."""
    import torch
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    out = _mk(out)
    tok = florence_tokenizer(out)
    ids = tok(script, add_special_tokens=False).input_ids
    assert len(ids) <= FLORENCE_D, f"script of {len(ids)} tokens; the scripted decoder follows {FLORENCE_D}"
    ip = CLIPImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                            do_center_crop=False, image_seq_length=5)
    proc = Florence2Processor(image_processor=ip, tokenizer=tok, post_processor_config=FLORENCE_PARSE_RULES)
    cfg = Florence2Config(
        vision_config=dict(depths=[1, 1, 1, 1], embed_dim=[8, 8, 16, 16], num_heads=[1, 1, 2, 2],
                           num_groups=[1, 1, 2, 2], window_size=2, projection_dim=FLORENCE_D, drop_path_rate=0.0),
        text_config=dict(model_type="bart", vocab_size=len(tok), d_model=FLORENCE_D, encoder_layers=1,
                         decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                         decoder_ffn_dim=32, max_position_embeddings=64, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         decoder_start_token_id=tok.eos_token_id, tie_word_embeddings=False),
        image_token_id=tok.image_token_id, tie_word_embeddings=False)
    m = Florence2ForConditionalGeneration(cfg).eval()
    lm = m.model.language_model
    dec = lm.decoder
    with torch.no_grad():
        for layer in dec.layers:   # the residual stream carries the position embedding only
            for lin in (layer.self_attn.out_proj, layer.encoder_attn.out_proj, layer.fc2):
                lin.weight.zero_()
                lin.bias.zero_()
        lm.shared.weight.zero_()
        dec.embed_tokens.weight.zero_()
        pe = dec.embed_positions.weight
        pe.zero_()
        off = getattr(dec.embed_positions, "offset", 2)
        for p in range(len(ids)):
            pe[p + off, p] = 1.0
        head = m.lm_head.weight
        head.zero_()
        for p, t in enumerate(ids):   # decoder position p (after the start token) writes the script's token p
            head[t, p] += 10.0
    m.generation_config.decoder_start_token_id = tok.eos_token_id
    return _save(m, proc, tok, out)


def _save(m, proc, tok, out) -> Path:
    """Save a generating model (it stops at, and pads with, the tokenizer's eos / pad) and its processor."""
    m.generation_config.pad_token_id = tok.pad_token_id
    m.generation_config.eos_token_id = tok.eos_token_id
    m.save_pretrained(out)
    proc.save_pretrained(out)
    return out


def _llama(tok, **kw) -> dict:
    """The Llama text model of the chat fixtures."""
    return tiny_text(tok, num_key_value_heads=1, max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                     eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)


def _chat_tokenizer(out: Path, extra: dict):
    from transformers import PreTrainedTokenizerFast
    _bpe_tokenizer(out)
    tok = PreTrainedTokenizerFast.from_pretrained(str(out), extra_special_tokens=extra)
    tok.save_pretrained(out)
    return tok


def build_llava(out, chat_template: bool = True):
    """LLaVA-style vision-language chat model: CLIP vision tower (32x32, 16 image tokens) + Llama."""
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)
    out = _mk(out)
    tok = _chat_tokenizer(out, {"image_token": "<image>"})
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
                          chat_template=CHAT_TEMPLATE.replace("IMAGE", "<image>") if chat_template else None,
                          image_token="<image>", num_additional_image_tokens=1)
    cfg = LlavaConfig(vision_config=CLIPVisionConfig(**tiny_stack(image_size=32, patch_size=8, projection_dim=16)),
                      text_config=LlamaConfig(**_llama(tok)), image_token_id=tok.image_token_id,
                      vision_feature_select_strategy="default", vision_feature_layer=-1)
    return _save(LlavaForConditionalGeneration(cfg), proc, tok, out)


def build_janus(out):
    """Janus (understanding path: SigLIP-style vision tower 32x32 -> 16 image tokens, Llama; a tiny VQ-VAE
    for the image-generation path the service does not serve)."""
    from transformers import JanusConfig, JanusForConditionalGeneration, JanusProcessor
    from transformers.models.janus.image_processing_pil_janus import JanusImageProcessorPil
    out = _mk(out)
    tok = _chat_tokenizer(out, {"image_token": "<image_placeholder>", "boi_token": "<begin_of_image>",
                                "eoi_token": "<end_of_image>"})
    ip = JanusImageProcessorPil(size={"height": 32, "width": 32}, min_size=4)
    proc = JanusProcessor(image_processor=ip, tokenizer=tok, num_image_tokens=16,
                          chat_template=CHAT_TEMPLATE.replace("IMAGE", "<image_placeholder>"))
    cfg = JanusConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=32, patch_size=8,
                           projection_dim=32, num_image_tokens=16, mlp_ratio=2),
        vq_config=dict(embed_dim=8, num_embeddings=32, latent_channels=32, base_channels=32, channel_multiplier=[1, 1],
                       num_res_blocks=1, projection_dim=32, image_token_embed_dim=32, num_hidden_layers=1),
        text_config=_llama(tok, model_type="llama"), image_token_id=tok.image_token_id)
    return _save(JanusForConditionalGeneration(cfg), proc, tok, out)
