"""Token data for training: a stream of the plain works, and chat examples built from dialogue.

A batch mixes plain windows (any block position after the first token) with chat examples (a
line, then the reply as the model's turn: the block lies inside the reply, and the text after
the turn's end is padding). Both come from a seeded generator, so a run is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .corpus import Corpus, dialogue_pairs


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, S]
    block_start: torch.Tensor  # [B]
    lm_mask: torch.Tensor  # [B, S-1] next-token targets that count (no padding)


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
            prompt = [{"role": "user", "content": line}]
            kwargs = {"enable_thinking": False} if i % 2 else {}  # both template variants
            head = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, **kwargs)
            head = list(head["input_ids"] if hasattr(head, "keys") else head)
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
