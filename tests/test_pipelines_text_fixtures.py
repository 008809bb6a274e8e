"""Helpers for tests/test_pipelines_text.py (no tests here): tiny random-weight models for code completion
(with each FIM token convention), token classification (NER with hand-set weights, so every label and score
is known) and summarization, built from a config and saved with save_pretrained. Nothing comes from a hub."""
from __future__ import annotations

import json
from pathlib import Path

from tests.test_hf_fixtures import LINES   # first: it switches transformers to offline mode

CODE = [
    "def add(a, b):\n    return a + b\n",
    "def mul(a, b):\n    return a * b\n",
    "for i in range(10):\n    print(i)\n",
    "class Point:\n    def __init__(self, x, y):\n        self.x = x\n        self.y = y\n",
    "import os\nprint(os.getcwd())\n",
] * 4

# convention -> (FIM tokens, end tokens) as the real tokenizers spell them
FIM_TOKENS = {
    "starcoder": (["<fim_prefix>", "<fim_suffix>", "<fim_middle>"], ["<|endoftext|>", "<file_sep>", "<fim_pad>"]),
    "santacoder": (["<fim-prefix>", "<fim-suffix>", "<fim-middle>"], ["<|endoftext|>", "<fim-pad>"]),
    "qwen": (["<|fim_prefix|>", "<|fim_suffix|>", "<|fim_middle|>"], ["<|endoftext|>", "<|fim_pad|>", "<|file_sep|>"]),
    "codellama": (["▁<PRE>", "▁<SUF>", "▁<MID>"], ["</s>", "▁<EOT>"]),
    "deepseek": (["<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"], ["<｜end▁of▁sentence｜>"]),
    "codestral": (["[PREFIX]", "[SUFFIX]"], ["</s>"]),
    "none": ([], ["<|endoftext|>"]),
}


def code_tokenizer(out: Path, convention: str = "starcoder", bos: bool = False):
    """Byte-level BPE over code lines plus the convention's special tokens (ids 0.. in FIM_TOKENS order: end
    tokens first, so the first one, the eos, is id 0). bos=True: '<s>' is added in front of every text, as
    Llama / CodeLlama / Codestral tokenizers do."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast
    fim, ends = FIM_TOKENS[convention]
    specials = ends + fim + (["<s>"] if bos else []) + ["<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CODE + LINES, trainer)
    kw = dict(eos_token=ends[0], unk_token="<unk>")
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A $B",
                                                           special_tokens=[("<s>", tok.token_to_id("<s>"))])
        kw["bos_token"] = "<s>"
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **kw)
    fast.save_pretrained(out)
    return fast


def build_coder(out, convention: str = "starcoder", bos: bool = False, ctx: int = 256, always: str = ""):
    """Tiny random GPT-2 with a tokenizer of `convention`'s FIM tokens ('none': no FIM tokens).
    always: a token the model then predicts at every step (final layer norm and embeddings set by hand)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = code_tokenizer(out, convention, bos)
    cfg = GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=ctx,
                     bos_token_id=tok.bos_token_id if bos else tok.eos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    m = GPT2LMHeadModel(cfg)
    if always:
        k = tok.convert_tokens_to_ids(always)
        with torch.no_grad():   # hidden state = ln_f.bias = e0; logits = wte @ e0: only row k has a component there
            m.transformer.ln_f.weight.zero_()
            m.transformer.ln_f.bias.zero_()
            m.transformer.ln_f.bias[0] = 1.0
            m.transformer.wte.weight[:, 0] = 0.0
            m.transformer.wte.weight[k, 0] = 10.0
    m.save_pretrained(out)
    return out


# ---- NER -----------------------------------------------------------------------------------------------
NER_LABELS = {0: "O", 1: "B-PER", 2: "I-PER", 3: "B-LOC", 4: "I-LOC"}
# token -> {label id: weight}: after the (only) layer norm, logits = 2 x normalised weights, so a single label
# scores ~0.99 and {O: 1.0, I-PER: 0.8} gives O ~0.72 / I-PER ~0.26
NER_TOKENS = {"grace": {1: 1.0}, "hop": {0: 1.0, 2: 0.8}, "##per": {2: 1.0}, "paris": {3: 1.0}, "new": {3: 1.0},
              "york": {4: 1.0}}
NER_TEXT = "Zoë and Grace Hopper visited Paris and New York."


def build_ner(out, ctx: int = 128):
    """BERT token classifier without transformer layers: label = f(token) exactly as NER_TOKENS says
    (every other token is O). 'Hopper' is 'hop' (weak O, I-PER second) + '##per' (strong I-PER), so the
    aggregations differ: simple -> PER 'Grace', PER 'per'; first -> PER 'Grace'; max / average -> PER 'Grace Hopper'."""
    import torch
    from transformers import BertConfig, BertForTokenClassification, BertTokenizerFast
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    words = ["and", "visited", "zoe", ".", "the", "quick", "brown", "fox"] + list(NER_TOKENS)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)})   # transformers 5: `vocab`, not vocab_file
    tok.save_pretrained(out)
    h = 8
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=h, intermediate_size=16, num_hidden_layers=0,
                     num_attention_heads=2, max_position_embeddings=ctx, num_labels=len(NER_LABELS),
                     id2label=NER_LABELS, label2id={v: k for k, v in NER_LABELS.items()},
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    m = BertForTokenClassification(cfg)
    with torch.no_grad():
        emb = m.bert.embeddings
        emb.word_embeddings.weight.zero_()
        emb.position_embeddings.weight.zero_()
        emb.token_type_embeddings.weight.zero_()
        emb.LayerNorm.weight.fill_(1.0)
        emb.LayerNorm.bias.zero_()
        for i, t in enumerate(vocab):
            for label, w in NER_TOKENS.get(t, {0: 1.0}).items():
                emb.word_embeddings.weight[i, label] = w
        m.classifier.weight.zero_()
        m.classifier.bias.zero_()
        for k in range(len(NER_LABELS)):
            m.classifier.weight[k, k] = 2.0
    m.save_pretrained(out)
    return out


# ---- summarization -----------------------------------------------------------------------------------
def build_bart_summarizer(out):
    """Tiny random BART with summarization-only task_specific_params (as BART-CNN / PEGASUS checkpoints)."""
    import torch
    from tests.test_pipelines_fixtures import _bpe_tokenizer
    from transformers import BartConfig, BartForConditionalGeneration
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tok = _bpe_tokenizer(out)
    cfg = BartConfig(vocab_size=len(tok), d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=37, decoder_ffn_dim=37, max_position_embeddings=64,
                     pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                     decoder_start_token_id=tok.eos_token_id, forced_bos_token_id=None,
                     task_specific_params={"summarization": {"max_length": 12, "min_length": 4, "num_beams": 2,
                                                             "length_penalty": 2.0, "no_repeat_ngram_size": 3,
                                                             "early_stopping": True}})
    torch.manual_seed(0)
    BartForConditionalGeneration(cfg).save_pretrained(out)
    return out


def build_t5_summarizer(out):
    """Tiny random T5 whose task_specific_params hold a 'summarize: ' prefix and a translation task (as t5-small)."""
    from tests.test_pipelines_fixtures import build_t5
    out = build_t5(out)
    cfg = json.loads((out / "config.json").read_text())
    cfg["task_specific_params"] = {"summarization": {"prefix": "summarize: "},
                                   "translation_en_to_de": {"prefix": "translate English to German: "}}
    (out / "config.json").write_text(json.dumps(cfg))
    return out
