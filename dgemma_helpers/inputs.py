"""What a caller passes to `generate` (prompts, initial canvas, pins), checked and made tensors: a bad
one is an InputError naming the argument, what it got and what it takes, before torch, the
tokenizer or the chat template sees it."""

from __future__ import annotations

import torch

from .errors import InputError
from .tokenizer import encode_prompts
from .validate import check, described, is_int
from .vision import MAX_IMAGES, ImageBatch, expand_images, load_image, require_vision


def prompt_batch(model, prompt, messages, input_ids, thinking: bool | None,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Left-padded ids [B, P], the validity mask [B, P] (False on pads) and each row's own ids.
    Text only: callers other than generate() (introspection, the benchmark engines) take no images."""
    return prompt_inputs(model, prompt, messages, input_ids, thinking, pad_id, text_only=True)[:3]


def prompt_inputs(model, prompt, messages, input_ids, thinking: bool | None, pad_id: int, text_only: bool = False
                  ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]], ImageBatch | None]:
    """prompt_batch's tensors, plus the image features when the chats hold images (None otherwise):
    each image is expanded into its soft tokens in the ids (dgemma_helpers/vision.py)."""
    given = [name for name, v in (("prompt", prompt), ("messages", messages), ("input_ids", input_ids))
             if v is not None]
    check(len(given) == 1, InputError, f"give exactly one of prompt, messages or input_ids (got {given or 'none'}).")
    check(thinking is None or isinstance(thinking, bool), InputError,
          f"thinking must be True, False or None (got {thinking!r}).")
    image_batch = None
    if prompt is not None:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt) if isinstance(prompt, (list, tuple)) else None
        check(prompts and all(isinstance(p, str) for p in prompts), InputError,
              f"prompt must be a string or a non-empty list of strings (got {described(prompt)}).")
        check(all(p.strip() for p in prompts), InputError,
              "a prompt is empty: give some text to continue (or messages=... for a chat).")
        rows = encode_prompts(model.tokenizer, prompts, None, thinking)
    elif messages is not None:
        chats = check_chats(messages)
        parts = [list(_image_parts(chat, c, len(chats))) for c, chat in enumerate(chats)]
        if any(parts):  # before reading any file: the caller and the model decide whether images can be read
            check(not text_only, InputError, "this function takes text prompts only: give images to "
                  "dg.generate(messages=...).")
            require_vision(model)
        images = [[load_image(part["image"], where) for where, part in row] for row in parts]
        rows = encode_prompts(model.tokenizer, None, [_for_template(chat) for chat in chats], thinking)
        if any(images):
            rows, image_batch = expand_images(model, rows, images)
    else:
        rows = _id_rows(input_ids)
    check(all(rows), InputError, "a prompt encodes to zero tokens: give some text or ids to continue.")
    V = model.config.vocab_size
    bad = [t for r in rows for t in r if not 0 <= t < V]
    check(not bad, InputError, f"token id(s) {bad[:5]} are outside the vocabulary 0..{V - 1}.")
    P = max(len(r) for r in rows)
    ids = torch.full((len(rows), P), pad_id, dtype=torch.long)
    valid = torch.zeros(len(rows), P, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, P - len(r):] = torch.tensor(r)
        valid[i, P - len(r):] = True
    return ids.to(model.device), valid.to(model.device), rows, image_batch


ROLES = ("system", "user", "assistant")


def check_chats(messages) -> list[list[dict]]:
    """One chat ([{'role': ..., 'content': '...'}, ...]) or a list of chats, checked message by message."""
    check(isinstance(messages, (list, tuple)) and messages, InputError, "messages must be a chat ([{'role': 'user', "
          f"'content': '...'}}]) or a list of chats (got {described(messages)}).")
    chats = [messages] if isinstance(messages[0], dict) else list(messages)
    for c, chat in enumerate(chats):
        check(isinstance(chat, (list, tuple)) and chat, InputError,
              f"chat {c} must be a non-empty list of messages (got {described(chat)}).")
        for i, m in enumerate(chat):
            where = f"message {i}" + (f" of chat {c}" if len(chats) > 1 else "")
            check(isinstance(m, dict) and "role" in m and "content" in m, InputError,
                  f"{where} must be a dict with 'role' and 'content' (got {described(m)}).")
            check(m["role"] in ROLES, InputError,
                  f"{where} has role {m['role']!r}; the chat template knows {', '.join(ROLES)}.")
            if not isinstance(m["content"], str):
                _check_parts(m["content"], where)
        n_images = sum(1 for _ in _image_parts(chat, c, len(chats)))
        check(n_images <= MAX_IMAGES, InputError, f"chat {c} holds {n_images} images; the kit takes at most "
              f"{MAX_IMAGES} per chat (each costs its soft tokens of the context and a pass of the vision tower): "
              "split the question, or give fewer images.")
    return [list(chat) for chat in chats]


PART_TYPES = ("text", "image")


def _check_parts(content, where: str) -> None:
    """A message's content as a list of parts: {'type': 'text', 'text': str} or {'type': 'image',
    'image': a PIL image or a local file path}, each checked by position."""
    check(isinstance(content, (list, tuple)) and content, InputError, f"{where} has content {described(content)}; "
          "give the message text as a string, or a non-empty list of parts like {'type': 'text', 'text': '...'} and "
          "{'type': 'image', 'image': PATH}.")
    for j, part in enumerate(content):
        at = f"{where}, part {j}"
        check(isinstance(part, dict) and "type" in part, InputError,
              f"{at} must be a dict with a 'type' ('text' or 'image'), got {described(part)}.")
        check(part["type"] in PART_TYPES, InputError,
              f"{at} has type {part['type']!r}; the kit reads 'text' and 'image' parts only.")
        check(part["type"] != "text" or isinstance(part.get("text"), str), InputError,
              f"{at} is a text part whose 'text' is {described(part.get('text'))}; give a string.")
        if part["type"] == "image":
            check("url" not in part, InputError, f"{at} gives an image by 'url': the kit never downloads (no network "
                  "at run time). Download it and give {'type': 'image', 'image': LOCAL_PATH} or a PIL image.")
            check(part.get("image") is not None, InputError, f"{at} is an image part without its image: give "
                  "{'type': 'image', 'image': X}, X a PIL image or a local file path.")


def _image_parts(chat: list[dict], c: int, n_chats: int):
    """(where, part) for every image part of a chat, in order."""
    for i, m in enumerate(chat):
        if isinstance(m.get("content"), (list, tuple)):
            for j, part in enumerate(m["content"]):
                if isinstance(part, dict) and part.get("type") == "image":
                    yield f"message {i}" + (f" of chat {c}" if n_chats > 1 else "") + f", part {j}", part


def _for_template(chat: list[dict]) -> list[dict]:
    """The chat as the template reads it: text-only part lists joined into a string (trimmed parts,
    as Gemma's template joins them: every template reads strings), image parts as bare
    {'type': 'image'} (the template only places them; the pixels never reach it)."""
    out = []
    for m in chat:
        content = m["content"]
        if isinstance(content, (list, tuple)):
            if all(p["type"] == "text" for p in content):
                content = "".join(p["text"].strip() for p in content)
            else:
                content = [{"type": "image"} if p["type"] == "image" else {"type": "text", "text": p["text"]}
                           for p in content]
        out.append({**m, "content": content})
    return out


def _id_rows(input_ids) -> list[list[int]]:
    what = "input_ids must be a list of token ids, a list of such lists, or an integer tensor"
    if isinstance(input_ids, torch.Tensor):
        integer = not (input_ids.is_floating_point() or input_ids.is_complex() or input_ids.dtype == torch.bool)
        check(integer and input_ids.ndim in (1, 2), InputError,
              f"{what} (got a {input_ids.dtype} tensor of shape {list(input_ids.shape)}).")
        input_ids = input_ids.tolist() if input_ids.ndim == 2 else [input_ids.tolist()]
    rows = None
    if isinstance(input_ids, (list, tuple)) and input_ids:
        rows = [list(input_ids)] if is_int(input_ids[0]) else input_ids
    if rows is None or any(not isinstance(r, (list, tuple)) or not all(is_int(t) for t in r) for r in rows):
        raise InputError(f"{what} (got {described(input_ids)}).")
    return [[int(t) for t in r] for r in rows]


def check_call(record_topk, on_step, vocab: int) -> None:
    """generate()'s arguments that are neither inputs nor sampler settings."""
    check(is_int(record_topk) and 0 <= record_topk <= vocab, InputError,
          f"record_topk must be an int in 0..{vocab} (got {described(record_topk)}).")
    check(on_step is None or callable(on_step), InputError,
          f"on_step must be a function that takes a StepRecord, or None (got {described(on_step)}).")


def token_id_list(name: str, value, vocab: int) -> tuple[int, ...]:
    """A list of token ids (e.g. eos_token_ids), each an int inside the vocabulary."""
    check(isinstance(value, (list, tuple, range)) and all(is_int(t) for t in value), InputError,
          f"{name} must be a list of token ids (got {described(value)}); [] for none.")
    bad = [t for t in value if not 0 <= t < vocab]
    check(not bad, InputError, f"{name} {bad[:5]} are outside the vocabulary 0..{vocab - 1}.")
    return tuple(value)


def canvas_inputs(initial_canvas, pinned, batch: int, length: int, vocab: int,
                  device: torch.device) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """The first canvas [B, L] and the pinned mask [B, L], checked against the canvas shape."""
    if initial_canvas is None:
        check(pinned is None, InputError, "pinned positions need initial_canvas=..., which says what they hold.")
        return None, None
    canvas = _int_tensor("initial_canvas", initial_canvas, "integer token ids")
    check(canvas.dtype != torch.bool, InputError, "initial_canvas must hold integer token ids (got a bool tensor).")
    canvas = canvas.long()  # before any comparison: a uint8 canvas would wrap the vocabulary size
    shape = list(canvas.shape)
    if canvas.ndim == 1:
        canvas = canvas[None].expand(batch, -1)
    check(tuple(canvas.shape) == (batch, length), InputError, f"initial_canvas has shape {shape}; expected [{length}] "
          f"or [{batch}, {length}] (the canvas length is {length}).")
    check(not bool(((canvas < 0) | (canvas >= vocab)).any()), InputError,
          f"initial_canvas holds ids outside the vocabulary 0..{vocab - 1}.")
    mask = None if pinned is None else _pin_mask(pinned, batch, length).to(device)
    return canvas.to(device=device, dtype=torch.long).contiguous(), mask


def _int_tensor(name: str, value, what: str) -> torch.Tensor:
    """A tensor of ints or bools from a tensor or a (nested) list; anything else is refused by name."""
    if isinstance(value, torch.Tensor):
        t = value
    elif isinstance(value, (list, tuple, range)):
        flat = list(value)
        while flat and isinstance(flat[0], (list, tuple)):
            flat = [x for row in flat for x in row]
        check(all(isinstance(x, int) for x in flat), InputError,  # bools are ints: a mask
              f"{name} must hold {what} (got {described(value)}).")
        try:
            t = torch.tensor(value)
        except (ValueError, TypeError, RuntimeError):  # ragged nesting
            raise InputError(f"{name} must be a rectangular list of {what} (got {described(value)}).") from None
    else:
        raise InputError(f"{name} must be a tensor or a list of {what} (got {described(value)}).")
    check(not (t.is_floating_point() or t.is_complex()), InputError, f"{name} must hold {what} (got dtype {t.dtype}).")
    return t


def _pin_mask(pinned, batch: int, length: int) -> torch.Tensor:
    p = _int_tensor("pinned", pinned, "canvas positions or a boolean mask")
    if p.dtype == torch.bool:
        shape = list(p.shape)
        if p.ndim == 1:
            p = p[None].expand(batch, -1)
        check(tuple(p.shape) == (batch, length), InputError,
              f"pinned mask has shape {shape}; expected [{length}] or [{batch}, {length}].")
        return p.clone()
    check(p.ndim == 1, InputError,
          f"pinned positions must be a flat list (got shape {list(p.shape)}), or a boolean mask.")
    out_of_range = [int(i) for i in p.tolist() if not 0 <= int(i) < length]
    check(not out_of_range, InputError,
          f"pinned position(s) {out_of_range[:5]} are outside the canvas 0..{length - 1}.")
    mask = torch.zeros(batch, length, dtype=torch.bool)
    mask[:, p.long()] = True
    return mask
