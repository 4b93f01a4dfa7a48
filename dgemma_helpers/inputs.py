"""Turn what a caller passes to `generate` into checked tensors: prompts, initial canvas, pins."""

from __future__ import annotations

import torch

from .errors import InputError
from .tokenizer import encode_prompts


def prompt_batch(model, prompt, messages, input_ids, thinking: bool | None,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-padded ids [B, P], the validity mask [B, P] (False on pads) and each row's own ids."""
    given = [name for name, v in (("prompt", prompt), ("messages", messages), ("input_ids", input_ids)) if v is not None]
    if len(given) != 1:
        raise InputError(f"give exactly one of prompt, messages or input_ids (got {given or 'none'}).")
    if prompt is not None:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise InputError("prompt must be a string or a non-empty list of strings.")
        if any(not p.strip() for p in prompts):
            raise InputError("a prompt is empty: give some text to continue (or messages=... for a chat).")
        rows = encode_prompts(model.tokenizer, prompts, None, thinking)
    elif messages is not None:
        chats = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        if not chats or not all(chat and all(isinstance(m, dict) and "role" in m and "content" in m for m in chat)
                                for chat in chats):
            raise InputError("messages must be a chat ([{'role': 'user', 'content': '...'}]) or a list of chats.")
        rows = encode_prompts(model.tokenizer, None, chats, thinking)
    else:
        if isinstance(input_ids, torch.Tensor):
            input_ids = input_ids.tolist() if input_ids.ndim == 2 else [input_ids.tolist()]
        rows = [list(input_ids)] if input_ids and isinstance(input_ids[0], int) else [list(r) for r in input_ids]
        if not rows or any(not isinstance(t, int) for r in rows for t in r):
            raise InputError("input_ids must be a list of token ids, a list of such lists, or an integer tensor.")
    if any(len(r) == 0 for r in rows):
        raise InputError("a prompt encodes to zero tokens: give some text or ids to continue.")
    V = model.config.vocab_size
    bad = [t for r in rows for t in r if not 0 <= t < V]
    if bad:
        raise InputError(f"token id(s) {bad[:5]} are outside the vocabulary 0..{V - 1}.")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), P, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        valid[i, P - len(r):] = True
    device = model.device
    return ids.to(device), valid.to(device), rows


def canvas_inputs(initial_canvas, pinned, batch: int, length: int, vocab: int,
                  device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The first canvas [B, L] and the pinned mask [B, L], checked against the canvas shape."""
    if initial_canvas is None:
        if pinned is not None:
            raise InputError("pinned positions need initial_canvas=..., which says what they hold.")
        return None, None
    canvas = torch.as_tensor(initial_canvas)
    if canvas.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.bool):
        raise InputError(f"initial_canvas must hold integer token ids (got dtype {canvas.dtype}).")
    shape = list(canvas.shape)
    if canvas.ndim == 1:
        canvas = canvas[None].expand(batch, -1)
    if canvas.ndim != 2 or tuple(canvas.shape) != (batch, length):
        raise InputError(f"initial_canvas has shape {shape}; expected [{length}] or [{batch}, {length}] "
                         f"(the canvas length is {length}).")
    if bool(((canvas < 0) | (canvas >= vocab)).any()):
        raise InputError(f"initial_canvas holds ids outside the vocabulary 0..{vocab - 1}.")
    mask = None
    if pinned is not None:
        mask = _pin_mask(pinned, batch, length)
    return canvas.to(device=device, dtype=torch.long).contiguous(), None if mask is None else mask.to(device)


def _pin_mask(pinned, batch: int, length: int) -> torch.Tensor:
    p = torch.as_tensor(pinned) if not isinstance(pinned, torch.Tensor) else pinned
    if p.dtype == torch.bool:
        shape = list(p.shape)
        if p.ndim == 1:
            p = p[None].expand(batch, -1)
        if tuple(p.shape) != (batch, length):
            raise InputError(f"pinned mask has shape {shape}; expected [{length}] or [{batch}, {length}].")
        return p.clone()
    if p.ndim != 1 or p.is_floating_point():
        raise InputError("pinned must be a list of canvas positions or a boolean mask over the canvas.")
    out_of_range = [int(i) for i in p.tolist() if not 0 <= int(i) < length]
    if out_of_range:
        raise InputError(f"pinned position(s) {out_of_range[:5]} are outside the canvas 0..{length - 1}.")
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, p.long()] = True
    return mask
