"""Infilling: pin a prefix and a suffix of the first canvas and let the model write the middle, which
sees the suffix as well as the prefix. The middle starts as uniform random tokens, the "unknown" state
the model was trained to denoise (there is no mask token).

    fill = infill_canvas(model, "ROMEO: But soft, what light", "is the sun.")
    result = generate(model, input_ids=[bos], **fill.generate_kwargs())
    print(fill.middle_text(model, result))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..errors import InputError
from ..generation import GenerationResult
from ..model import DiffusionGemma
from ..tokenizer import decode
from ..validate import check


@dataclass
class InfillCanvas:
    canvas: torch.Tensor  # [L] token ids: prefix, random middle, suffix
    pinned: torch.Tensor  # [L] bool, True on the prefix and the suffix
    prefix_len: int
    suffix_len: int

    @property
    def middle(self) -> slice:
        return slice(self.prefix_len, len(self.canvas) - self.suffix_len)

    def generate_kwargs(self) -> dict[str, Any]:
        """Keywords for generate(): this canvas, its pins, one canvas of output, and no end-of-sequence
        cut (an EOS written in the middle would otherwise turn the pinned suffix into padding)."""
        return dict(initial_canvas=self.canvas, pinned=self.pinned, max_new_tokens=len(self.canvas), eos_token_ids=[])

    def middle_text(self, model: DiffusionGemma, result: GenerationResult, row: int = 0) -> str | None:
        return decode(model.tokenizer, result.token_ids[row, self.middle].tolist())


def infill_canvas(model: DiffusionGemma, prefix: str | Sequence[int], suffix: str | Sequence[int], *,
                  seed: int = 0) -> InfillCanvas:
    """A first canvas with `prefix` at its start and `suffix` at its end, both pinned (text is
    encoded with the model's tokenizer, without special tokens; or pass token ids)."""
    L, V = model.config.canvas_length, model.config.vocab_size
    pre, suf = _ids(model, prefix, "prefix"), _ids(model, suffix, "suffix")
    check(len(pre) + len(suf) < L, InputError, f"prefix ({len(pre)} tokens) and suffix ({len(suf)} tokens) leave no "
          f"room to fill in a canvas of {L} tokens: shorten them to fewer than {L} tokens together.")
    bad = [t for t in pre + suf if not 0 <= t < V]
    check(not bad, InputError, f"token id(s) {bad[:5]} are outside the vocabulary 0..{V - 1}.")
    position = torch.arange(L)
    pinned = (position < len(pre)) | (position >= L - len(suf))
    canvas = torch.randint(0, V, (L,), generator=torch.Generator().manual_seed(seed))
    canvas[pinned] = torch.tensor(pre + suf, dtype=torch.long)
    return InfillCanvas(canvas=canvas, pinned=pinned, prefix_len=len(pre), suffix_len=len(suf))


def _ids(model: DiffusionGemma, part: str | Sequence[int], name: str) -> list[int]:
    if isinstance(part, str):
        check(model.tokenizer is not None, InputError,
              f"this checkpoint ships no tokenizer: give the {name} as token ids.")
        return list(model.tokenizer.encode(part, add_special_tokens=False))
    if isinstance(part, torch.Tensor):
        part = part.tolist()
    check(all(isinstance(t, int) for t in part), InputError, f"the {name} must be text or a list of token ids.")
    return list(part)
