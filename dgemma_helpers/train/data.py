"""Token data for training: a batch mixes windows of the plain works (any block position after the
first token) with chat examples built from dialogue (a line, then the reply as the model's turn: the
block lies inside the reply, the text after the turn's end is padding), drawn from a seeded generator."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .corpus import Corpus, dialogue_pairs


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, S]
    block_start: torch.Tensor  # [B]
    lm_mask: torch.Tensor  # [B, S-1] next-token targets that count (no padding)
    block_mask: torch.Tensor | None = None  # [B, canvas] block positions that count (None: all)


def chat_ids(tokenizer, messages: list[dict], add_generation_prompt: bool, **kwargs) -> list[int]:
    """The chat template's token ids (some tokenizers return them inside a dict)."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True, **kwargs)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


class TokenData:
    def __init__(self, corpus: Corpus, tokenizer, seq_len: int, canvas: int, chat_fraction: float = 0.25) -> None:
        self.seq_len, self.canvas, self.chat_fraction = seq_len, canvas, chat_fraction
        self.pad = tokenizer.pad_token_id
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.train = self._stream(corpus.train, tokenizer)
        self.heldout = self._stream(corpus.heldout, tokenizer)
        self.chat = self._chats(corpus.train, tokenizer)
        self.heldout_chat = self._chats(corpus.heldout, tokenizer)

    def _stream(self, works, tokenizer) -> torch.Tensor:
        ids: list[int] = []
        for w in works:  # <eos> between works: the model learns where a text ends
            # The backend tokenizer: whole works exceed model_max_length, which only matters to the wrapper.
            ids += tokenizer.backend_tokenizer.encode(w.text, add_special_tokens=False).ids + [self.eos]
        return torch.tensor(ids, dtype=torch.int32)

    def _chats(self, works, tokenizer) -> list[tuple[torch.Tensor, int]]:
        """(ids, reply start) per example, keeping those whose reply has a full canvas of room."""
        out = []
        for i, (line, reply) in enumerate(dialogue_pairs(works)):
            kwargs = {"enable_thinking": False} if i % 2 else {}  # both template variants
            head = chat_ids(tokenizer, [{"role": "user", "content": line}], add_generation_prompt=True, **kwargs)
            body = tokenizer.encode(reply.strip(), add_special_tokens=False) + [tokenizer.convert_tokens_to_ids("<end_of_turn>")]
            ids = (head + body)[: self.seq_len]
            if len(head) + 1 <= self.seq_len - self.canvas:
                out.append((torch.tensor(ids, dtype=torch.int32), len(head)))
        return out

    def sample(self, batch_size: int, generator: torch.Generator, heldout: bool = False) -> Batch:
        S, C = self.seq_len, self.canvas
        stream, chats = (self.heldout, self.heldout_chat) if heldout else (self.train, self.chat)
        tokens = torch.full((batch_size, S), self.pad, dtype=torch.long)
        starts = torch.zeros(batch_size, dtype=torch.long)
        lm_mask = torch.ones(batch_size, S - 1)
        n_chat = int(round(batch_size * self.chat_fraction)) if chats else 0
        for i in range(batch_size):
            if i < n_chat:
                ids, reply = chats[int(torch.randint(len(chats), (1,), generator=generator))]
                tokens[i, : len(ids)] = ids.long()
                lm_mask[i, len(ids) - 1:] = 0
                # Blocks start in the reply; late starts cover its end and the padding after it.
                last = min(S - C, len(ids) - 1)
                starts[i] = reply + int(torch.randint(max(1, last - reply + 1), (1,), generator=generator))
            else:
                at = int(torch.randint(len(stream) - (S - 1), (1,), generator=generator))
                tokens[i, 0] = self.bos
                tokens[i, 1:] = stream[at: at + S - 1].long()
                starts[i] = 1 + int(torch.randint(S - C, (1,), generator=generator))
        return Batch(tokens, starts, lm_mask)
