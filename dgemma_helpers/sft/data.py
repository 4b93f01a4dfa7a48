"""Chat data for fine-tuning: OpenAI chat-messages JSONL (or the same as Python lists) -> token ids and
the span the loss supervises: the final assistant turn, its content and the end-of-turn token.

The span is found with the checkpoint's own chat template, rendered twice: the conversation without
its last turn plus the generation prompt (the assistant header), and the whole conversation. What
the second adds, up to the first of the model's end tokens, is the reply: so the header is never
supervised, and no generation tags are needed (the released template has none). A reply longer than
one canvas trains on any one of its canvases, the earlier ones as clean context, as inference
commits them.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import ModelConfig
from ..errors import InputError
from ..train.data import Batch, chat_ids
from ..validate import shown

Conversation = list[dict[str, Any]]


@dataclass(frozen=True)
class Example:
    ids: list[int]  # the rendered conversation (without anything after the reply's end of turn)
    reply_start: int  # first supervised token: right after the assistant header


def read_conversations(data: str | os.PathLike | list) -> list[tuple[str, Conversation]]:
    """(where, messages) per example, from a JSONL file (one {"messages": [...]} per line) or a list of
    conversations (each a list of messages, or a {"messages": [...]} dict)."""
    if isinstance(data, (str, os.PathLike)):
        path = Path(data)
        if not path.is_file():
            raise InputError(f"{path} is not a file: pass a chat-messages JSONL file (one "
                             '{"messages": [{"role": ..., "content": ...}, ...]} per line).')
        rows = []
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {n} of {path.name}", json.loads(line)))
            except json.JSONDecodeError as e:
                raise InputError(f"line {n} of {path} is not valid JSON ({e.msg} at column {e.colno}): write one "
                                 'JSON object per line, {"messages": [...]}.') from None
        if not rows:
            raise InputError(f"{path} holds no examples: write one JSON object per line, "
                             '{"messages": [{"role": "user", "content": ...}, {"role": "assistant", "content": ...}]}.')
    elif isinstance(data, list):
        if not data:
            raise InputError("the data holds no examples: pass a list of conversations, each a list of messages.")
        rows = [(f"example {n}", row) for n, row in enumerate(data)]
    else:
        raise InputError(f"data must be a JSONL file path or a list of conversations, not {type(data).__name__}.")
    return [(where, _messages(where, row)) for where, row in rows]


def _messages(where: str, row: Any) -> Conversation:
    messages = row.get("messages") if isinstance(row, dict) else row
    if not isinstance(messages, list) or not messages:
        raise InputError(f'{where}: expected {{"messages": [...]}} with at least one message, got {shown(row)}.')
    for m, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise InputError(f'{where}: message {m} needs a "role" (system, user or assistant); got {shown(message)}.')
        content = message.get("content")
        if isinstance(content, list):
            for part in content:
                if isinstance(part, dict) and part.get("type") in ("image", "image_url"):
                    raise InputError(f"{where}: message {m} has an image; fine-tuning reads text only (this "
                                     "model is text-only here): remove the image parts or the example.")
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            content = "".join(t for t in texts if isinstance(t, str))
        if not isinstance(content, str) or not content.strip():
            raise InputError(f'{where}: message {m} ({message["role"]}) has no content: give it a non-empty '
                             '"content" string, or remove it.')
    if messages[-1]["role"] != "assistant":
        kind = "has no assistant turn" if all(m["role"] != "assistant" for m in messages) else \
            f'ends with a {messages[-1]["role"]} turn'
        raise InputError(f"{where}: the conversation {kind}, so there is no reply to supervise: end it with "
                         'the {"role": "assistant", ...} message the model should learn to write.')
    return messages


def encode_examples(conversations: list[tuple[str, Conversation]], tokenizer, config: ModelConfig,
                    max_tokens: int | None = None) -> list[Example]:
    """Token ids and the supervised span of each conversation. An example whose padded length (the
    prompt and every canvas the reply touches) exceeds `max_tokens` (default: the model's context) is
    refused, never cut: a cut reply would teach the model to stop mid-sentence."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise InputError("this checkpoint has no tokenizer with a chat template, which fine-tuning on chat data "
                         "needs: add tokenizer.json and a chat template to the checkpoint.")
    limit = max_tokens or config.max_position_embeddings
    ends = set(config.eos_token_ids)
    out = []
    for where, messages in conversations:
        head = chat_ids(tokenizer, messages[:-1], add_generation_prompt=True)
        full = chat_ids(tokenizer, messages, add_generation_prompt=False)
        if full[: len(head)] != head:
            raise InputError(f"{where}: the chat template does not render the conversation as its earlier turns "
                             "plus the assistant header, then the reply, so the reply cannot be told apart: use a "
                             "template that keeps earlier turns unchanged when a turn is added.")
        reply = full[len(head):]
        stop = next((i for i, t in enumerate(reply) if t in ends), None)
        if stop is None:
            raise InputError(f"{where}: the chat template does not close the assistant turn with one of the "
                             f"model's end tokens {sorted(ends)}: fix eos_token_id in generation_config.json or the "
                             "template.")
        example = Example(ids=head + reply[: stop + 1], reply_start=len(head))
        needed = padded_length(example, config.canvas_length)
        if needed > limit:
            raise InputError(f"{where}: the example takes {needed:,} tokens (prompt {len(head):,} + a reply of "
                             f"{stop + 1:,} in whole canvases of {config.canvas_length}), more than the {limit:,} this "
                             "run trains on: shorten or drop it, or raise max_tokens (up to the model's context, "
                             f"{config.max_position_embeddings:,}).")
        out.append(example)
    return out


def canvases(example: Example, canvas: int) -> int:
    return math.ceil((len(example.ids) - example.reply_start) / canvas)


def padded_length(example: Example, canvas: int) -> int:
    return example.reply_start + canvases(example, canvas) * canvas


def make_batch(examples: list[Example], canvas: int, pad: int, generator: torch.Generator | None = None,
               canvas_index: list[int] | None = None) -> Batch:
    """The examples padded to one length, each with one of its reply's canvases (random, or the given
    `canvas_index` per example) as the block to denoise."""
    S = max(padded_length(e, canvas) for e in examples)
    B = len(examples)
    tokens = torch.full((B, S), pad, dtype=torch.long)
    block_start = torch.zeros(B, dtype=torch.long)
    lm_mask = torch.zeros(B, S - 1)
    block_mask = torch.zeros(B, canvas)
    for i, e in enumerate(examples):
        tokens[i, : len(e.ids)] = torch.tensor(e.ids)
        k = canvas_index[i] if canvas_index is not None else \
            int(torch.randint(canvases(e, canvas), (1,), generator=generator))
        block_start[i] = e.reply_start + k * canvas
        lm_mask[i, e.reply_start - 1: len(e.ids) - 1] = 1  # targets at reply_start .. the reply's end of turn
        block_mask[i, : max(0, min(canvas, len(e.ids) - int(block_start[i])))] = 1
    return Batch(tokens, block_start, lm_mask, block_mask)

