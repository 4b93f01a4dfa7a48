"""readable(): partial UTF-8 shows as its bytes, never as U+FFFD, for both tokenizer families."""

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from dgemma_helpers.tokenizer import load_tokenizer, readable, token_bytes

TINY = Path(__file__).resolve().parents[1] / "models" / "dgemma-tiny"


def test_byte_level_tokens_join_into_characters_and_halves_show_as_bytes():
    tok = load_tokenizer(TINY)
    ids = tok.encode("not 日本 é", add_special_tokens=True)
    assert readable(tok, ids) == tok.decode(ids, skip_special_tokens=True) == "not 日本 é"
    half = [i for i, b in zip(ids, token_bytes(tok, ids)) if b == b"\xe6"][:1]
    assert readable(tok, half) == "\\xe6" and "\ufffd" in tok.decode(half)


def test_sentencepiece_byte_fallback_tokens():
    # Gemma's family: "\u2581" marks a word start, <0xNN> tokens carry single bytes.
    vocab = {"<pad>": 0, "<eos>": 1, "\u2581not": 2, "é": 3, **{f"<0x{b:02X}>": 4 + b for b in range(256)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "\u2581")
    backend.decoder = decoders.Sequence([decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")
    ids = [2, 3, 4 + 0xE6, 4 + 0x97, 4 + 0xA5, 1]
    assert readable(tok, ids) == " noté日"
    assert readable(tok, ids[:3]) == " noté\\xe6"
