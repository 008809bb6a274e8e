"""Bounds on what one caller may ask of the HF worker (DESIGN.md §6b): every count, size and duration
of a request is checked here before it is parsed further, tokenised or run.

| limit                  | default   | checked in                                  | worker option          |
|------------------------|-----------|---------------------------------------------|------------------------|
| request bytes          | derived   | every handler below, before parsing         | (from the limits)      |
| PROMPT_MAX_CHARS       | 262144    | GenerateText prompt, Pipelines/Run texts    | max_prompt_chars       |
| CHAT_MAX_MESSAGES      | 1024      | ChatCompletion, before reading a message    | chat_max_messages      |
| CHAT_MAX_TOTAL_CHARS   | 262144    | ChatCompletion, sum of message contents     | chat_max_chars         |
| prompt tokens          | context   | GenerateText/Chat, tokenising at most       | (the model's config)   |
|                        |           | context x PROMPT_CHARS_PER_TOKEN characters |                        |
| GEN_MAX_NEW_TOKENS     | 65536     | max_length (also capped by the context)     | -                      |
| EMBED_MAX_TEXTS        | 256       | GenerateEmbeddings texts per request        | max_embed_texts        |
| EMBED_MAX_TEXT_CHARS   | 32768     | GenerateEmbeddings, each text               | embed_max_text_chars   |
| EMBED_MAX_TOTAL_CHARS  | 2097152   | GenerateEmbeddings, all texts together      | embed_max_total_chars  |
| AUDIO_MAX_SECONDS      | 1800      | Transcribe / StreamTranscribe / Run audio,  | max_audio_s            |
|                        |           | from the header, before samples are decoded |                        |

A request over a limit is answered INVALID_ARGUMENT naming the limit (the same request can never
succeed, so it is not RESOURCE_EXHAUSTED, which tells a caller to retry later). Embedding texts are
also clipped to what the model reads (max_seq_length x EMBED_CHARS_PER_TOKEN characters) before
tokenisation, and embedding work runs in sub-batches of at most EMBED_BATCH_TEXTS texts /
EMBED_BATCH_CHARS characters with a cancellation check between them.
"""
from __future__ import annotations

from workers.context import WorkerError

PROMPT_MAX_CHARS = 262_144
PROMPT_CHARS_PER_TOKEN = 16       # a token longer than this on average only happens in crafted text
CHAT_MAX_MESSAGES = 1024
CHAT_MAX_TOTAL_CHARS = 262_144
GEN_MAX_NEW_TOKENS = 65_536
EMBED_MAX_TEXTS = 256
EMBED_MAX_TEXT_CHARS = 32_768
EMBED_MAX_TOTAL_CHARS = 2 * 2**20
EMBED_CHARS_PER_TOKEN = 16
EMBED_BATCH_TEXTS = 32
EMBED_BATCH_CHARS = 32_768
AUDIO_MAX_SECONDS = 1800.0

# protobuf framing: a string field costs its UTF-8 bytes (<= 4 per character) plus a few bytes of tag
# and length; a repeated message element (ChatMessage) a few more. Generous on purpose.
_PER_ELEMENT_BYTES = 64
_SLACK_BYTES = 4096


def max_request_bytes(max_chars: int, max_elements: int = 1) -> int:
    """The largest serialized request that can hold max_chars characters in max_elements strings."""
    return 4 * max_chars + _PER_ELEMENT_BYTES * max_elements + _SLACK_BYTES


def check_payload(payload: bytes, limit_bytes: int, what: str, limits_text: str) -> None:
    """Refuse a serialized request too big to be within the limits, before protobuf parses it."""
    if len(payload) > limit_bytes:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: the request is {len(payload)} bytes; a request within the "
                                              f"limits ({limits_text}) is at most {limit_bytes} bytes")


def check_count(n: int, limit: int, what: str, option: str, hint: str) -> None:
    if n > limit:
        raise WorkerError("INVALID_ARGUMENT", f"{what}: {n} in one request; the limit is {limit} "
                                              f"(worker option {option}); {hint}")


def check_chars(n: int, limit: int, what: str, option: str, hint: str) -> None:
    if n > limit:
        raise WorkerError("INVALID_ARGUMENT", f"{what} is {n} characters; the limit is {limit} "
                                              f"(worker option {option}); {hint}")
