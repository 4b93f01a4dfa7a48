"""Tokenizer loading and prompt encoding (plain text, or chat messages through the checkpoint's template)."""

from __future__ import annotations

import logging
import re
from functools import cache
from pathlib import Path
from typing import Any

from .errors import CheckpointError, InputError
from .validate import check

log = logging.getLogger("dgemma_helpers")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model")

SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>", "<think>", "</think>"]
# Gemma 4's image tokens: begin of image, the soft-token placeholder, end of image (ids follow
# SPECIAL_TOKENS when train_tokenizer(image_tokens=True)). The chat template writes one placeholder
# per {"type": "image"} part; dgemma_helpers/vision.py expands it to boi, N placeholders, eoi.
IMAGE_TOKENS = ["<|image>", "<|image|>", "<image|>"]
# Gemma-style turns; `enable_thinking=False` closes an empty thought so the model answers directly.
# Content is a string, or a list of parts as Gemma's template takes them: text parts trimmed, each
# image part as the image placeholder.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<start_of_turn>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}{% for part in m['content'] %}"
    "{% if part['type'] == 'image' %}<|image|>{% elif part['type'] == 'text' %}{{ part['text'] | trim }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think></think>\n{% endif %}{% endif %}"
)


def train_tokenizer(texts: list[str], vocab_size: int, model_max_length: int = 4096, image_tokens: bool = False):
    """A byte-level BPE tokenizer with the kit's special tokens, as a transformers fast tokenizer.
    `image_tokens` adds IMAGE_TOKENS right after them (ids 8, 9, 10), for image prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = SPECIAL_TOKENS + (IMAGE_TOKENS if image_tokens else [])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", model_max_length=model_max_length)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def load_tokenizer(path: Path):
    """The checkpoint's tokenizer (a transformers fast tokenizer), or None when it ships none."""
    if not any((path / f).exists() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - surfaced with the file that failed
        raise CheckpointError(f"the tokenizer files in {path} could not be loaded ({type(e).__name__}: {e}); "
                              "re-download them or remove them to work with token ids only.") from e


def supports_thinking(tokenizer) -> bool:
    return "enable_thinking" in (getattr(tokenizer, "chat_template", None) or "")


def encode_prompts(tokenizer, prompts: list[str] | None, conversations: list[list[dict[str, Any]]] | None,
                   thinking: bool | None) -> list[list[int]]:
    """Token ids of each prompt; chat conversations go through the checkpoint's chat template."""
    check(tokenizer is not None, InputError, "this checkpoint ships no tokenizer, so it cannot read text: pass token "
          "ids with input_ids=..., or add tokenizer.json to the checkpoint directory.")
    if conversations is not None:
        check(getattr(tokenizer, "chat_template", None), InputError, "this checkpoint's tokenizer has no chat "
              "template: pass a plain prompt instead of messages.")
        check(thinking is None or supports_thinking(tokenizer), InputError, "this checkpoint's chat template has no "
              "thinking switch: leave thinking=None.")
        kwargs = {} if thinking is None else {"enable_thinking": thinking}
        out = []
        for messages in conversations:
            ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, **kwargs)
            if hasattr(ids, "keys"):  # a dict or a BatchEncoding
                ids = ids["input_ids"]
            out.append(list(ids))
        return out
    # verbose=False: a prompt longer than the tokenizer's model_max_length is the kit's to refuse (with
    # the context length and the fix), not a transformers warning printed first.
    return [tokenizer.encode(p, add_special_tokens=True, verbose=False) for p in prompts]


def decode(tokenizer, ids: list[int]) -> str | None:
    return None if tokenizer is None else tokenizer.decode(ids, skip_special_tokens=True)


# A byte-fallback token (SentencePiece tokenizers such as Gemma's) names one raw byte.
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


@cache
def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte -> the byte (GPT-2's table, as transformers has it)."""
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    return {stand_in: byte for byte, stand_in in bytes_to_unicode().items()}


def token_bytes(tokenizer, ids: list[int]) -> list[bytes]:
    """The raw bytes each token stands for; special tokens give b"" (as decode skips them).

    A token may hold part of a UTF-8 character (an emoji or a CJK character is often split over
    two or three tokens), so only a run of tokens decodes to text: see `readable`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    alphabet = _byte_level_alphabet() if "ByteLevel" in repr(getattr(backend, "decoder", None)) else {}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    out = []
    for i, piece in zip(ids, tokenizer.convert_ids_to_tokens(list(ids))):
        if i in special or piece is None:
            out.append(b"")
        elif (m := _BYTE_TOKEN.fullmatch(piece)) is not None:
            out.append(bytes([int(m.group(1), 16)]))
        elif alphabet and all(ch in alphabet for ch in piece):
            out.append(bytes(alphabet[ch] for ch in piece))
        else:  # a SentencePiece piece: its word-start marker is a space
            out.append(piece.replace("\u2581", " ").encode("utf-8"))
    return out


def readable(tokenizer, ids: list[int]) -> str:
    """The text of `ids` for people to read: a partial UTF-8 character, which decode() turns into
    U+FFFD (or a tofu box), shows as its bytes (`\\xe3`), so noise reads as noise."""
    if tokenizer is None:
        return " ".join(map(str, ids))
    return b"".join(token_bytes(tokenizer, ids)).decode("utf-8", errors="backslashreplace")


def text_ids(row: list[int], eos_ids, pad_id: int) -> list[int]:
    """The ids of a generated row that are text: up to its first EOS, pads dropped."""
    for i, t in enumerate(row):
        if t in eos_ids:
            return row[:i]
    return [t for t in row if t != pad_id]
