"""Chat prompts: validate messages and render them with the model's own chat template.

A tokenizer without a chat template (plain base models) gets a minimal "role: content" transcript
ending in "assistant:", and the log says so. `prompt_ids` also renders a plain GenerateText prompt
as one user turn when the model has a chat template (like Ollama's generate without `raw`), unless
the load option raw_prompt=true asks for the text as is.
"""
from __future__ import annotations

import logging

from workers.context import WorkerError

ROLES = ("system", "user", "assistant", "tool")
FINISH_REASONS = ("stop", "length", "cancelled")
log = logging.getLogger("hf.chat")


def validate_messages(messages, max_chars: int) -> list[dict]:
    if not messages:
        raise WorkerError("INVALID_ARGUMENT", "messages is empty: send at least one {role, content} message")
    out, total = [], 0
    for i, m in enumerate(messages):
        role = (m.role or "").strip().lower()
        if role not in ROLES:
            raise WorkerError("INVALID_ARGUMENT", f"messages[{i}].role is '{m.role}'; use one of {', '.join(ROLES)}")
        total += len(m.content)
        out.append({"role": role, "content": m.content})
    if total > max_chars:
        raise WorkerError("INVALID_ARGUMENT", f"messages hold {total} characters; the limit is {max_chars}")
    if not any(m["content"].strip() for m in out):
        raise WorkerError("INVALID_ARGUMENT", "every message is empty: nothing to answer")
    return out


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render(tokenizer, messages: list[dict]) -> str:
    if has_template(tokenizer):
        try:
            return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except Exception as exc:  # templates raise on e.g. roles they do not support
            raise WorkerError("INVALID_ARGUMENT", f"the model's chat template rejected these messages: {exc}") from None
    log.info("model has no chat template; using a plain role: content transcript")
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


def encode(tokenizer, text: str, templated: bool) -> list[int]:
    # a rendered chat template already holds its special tokens (BOS etc.)
    enc = tokenizer(text, add_special_tokens=not templated)
    return list(enc["input_ids"])


def chat_prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    return encode(tokenizer, render(tokenizer, messages), has_template(tokenizer))


def text_prompt_ids(tokenizer, prompt: str, raw: bool) -> list[int]:
    if not raw and has_template(tokenizer):
        return chat_prompt_ids(tokenizer, [{"role": "user", "content": prompt}])
    return encode(tokenizer, prompt, False)
