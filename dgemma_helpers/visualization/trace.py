"""DenoisingTrace: every denoising round of one generation, kept for replay, plots and export.

    trace = dg.DenoisingTrace.from_model(model, prompt=prompt)
    result = dg.generate(model, prompt, on_step=trace.record, record_topk=5)
    trace.finish(result)            # optional: the run's exact prompt ids and settings, checked
    trace.save("trace.json.gz")     # versioned gzip JSON (trace_file.py); DenoisingTrace.load refuses bad files

A trace follows ONE batch row (`row=`); rounds in which that row was frozen (its adaptive stop had fired
while other rows went on) are not recorded. A file keeps the text of the ids that occur, not the tokenizer.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_file, atomic_write
from ..errors import InputError
from ..sampler import finalize_canvas
from ..tokenizer import readable
from ..validate import check
from .player_html import player_html
from .trace_file import (ARRAY_DTYPES, FORMAT, INT32_MAX, SCALAR_FIELDS, VERSION, checked_settings, encode_array,
                         parse_document, read_document)


@dataclass
class TraceRound:
    """One recorded round of one row (numpy arrays over the L canvas positions)."""

    canvas_index: int
    step: int  # 1-based round within its canvas
    remaining: int
    temperature: float
    canvas_ids: np.ndarray  # [L] int32: accepted tokens + fresh noise (what the denoiser reads next)
    argmax_ids: np.ndarray  # [L] int32: the model's best guess (what would be committed)
    accepted: np.ndarray  # [L] bool: accepted this round
    entropy: np.ndarray  # [L] float32
    pinned: np.ndarray  # [L] bool: held fixed (infilling); all False without pins
    top_ids: np.ndarray | None = None  # [L, k] int32, when generate ran with record_topk=k
    top_probs: np.ndarray | None = None  # [L, k] float32


class DenoisingTrace:
    """The rounds of one generation (one batch row), with the decoded text of every token id in them."""

    def __init__(self, canvas_length: int | None = None, *, tokenizer: Any = None, vocab_size: int | None = None,
                 prompt: str | None = None, prompt_ids: list[int] | None = None,
                 settings: dict[str, Any] | Any = None, row: int = 0, title: str | None = None) -> None:
        check(type(row) is int and row >= 0, InputError, f"row must be a batch row index >= 0 (got {row!r}).")
        # The file's limits: positions and ids are int32, so a vocabulary may hold 2**31 ids.
        limits = (("canvas_length", canvas_length, INT32_MAX), ("vocab_size", vocab_size, INT32_MAX + 1))
        for name, value, top in limits:
            check(value is None or (type(value) is int and 1 <= value <= top), InputError,
                  f"{name} must be a positive integer or None (got {value!r}): take it from the model "
                  "(DenoisingTrace.from_model(model)).")
        if prompt_ids is not None and (not isinstance(prompt_ids, (list, tuple)) or any(
                type(t) is not int or not 0 <= t <= INT32_MAX for t in prompt_ids)):
            raise InputError(f"prompt_ids must be a list of token ids (got {prompt_ids!r:.80}).")
        self.canvas_length = canvas_length  # None: taken from the first recorded round
        self.tokenizer = tokenizer  # not saved: the file keeps only `vocab`
        self.vocab_size = vocab_size
        self.prompt = prompt
        self.prompt_ids = list(prompt_ids) if prompt_ids is not None else None
        self.settings = checked_settings(settings)
        self.row = row
        self.title = title
        self.complete = False  # set by finish(): no more rounds will come
        self.rounds: list[TraceRound] = []
        self.vocab: dict[int, str | None] = {}
        self.trace_id = uuid.uuid4().hex

    @classmethod
    def from_model(cls, model: Any, *, prompt: str | None = None, row: int = 0,
                   title: str | None = None) -> DenoisingTrace:
        """An empty trace for `model` (its canvas length, tokenizer and default settings)."""
        tokenizer = model.tokenizer
        prompt_ids = tokenizer.encode(prompt, add_special_tokens=True) if (prompt and tokenizer is not None) else None
        return cls(model.config.canvas_length, tokenizer=tokenizer, vocab_size=model.config.vocab_size,
                   prompt=prompt, prompt_ids=prompt_ids, settings=model.generation_settings, row=row,
                   title=title or (model.path.name if getattr(model, "path", None) else None))

    def __len__(self) -> int:
        return len(self.rounds)

    def __repr__(self) -> str:
        return (f"DenoisingTrace({len(self.rounds)} rounds over {self.num_canvases} canvas(es) of "
                f"{self.canvas_length} tokens, row {self.row}{', complete' if self.complete else ''})")

    # ---- recording ------------------------------------------------------------------------------
    def record(self, record: Any) -> bool:
        """Add one StepRecord (pass `on_step=trace.record` to generate). Returns False when the round
        is skipped because this trace's row was frozen in it."""
        check(not self.complete, InputError, "this trace is finished (finish() was called): record a new generation "
              "into a new DenoisingTrace.")
        canvas = record.canvas_ids
        check(canvas.ndim == 2, InputError, f"expected a StepRecord with canvas_ids of shape [batch, canvas] (got "
              f"{list(canvas.shape)}): pass on_step=trace.record to generate().")
        B, L = canvas.shape
        check(self.row < B, InputError, f"this trace follows batch row {self.row}, but the batch has {B} row(s): "
              f"make the trace with row= in 0..{B - 1}.")
        if self.canvas_length is None:
            self.canvas_length = L
        check(L == self.canvas_length, InputError, f"the record's canvas has {L} tokens but this trace's has "
              f"{self.canvas_length}: make the trace from the model that generates (DenoisingTrace.from_model(model)).")
        check(not self.rounds or record.canvas_index >= self.rounds[-1].canvas_index, InputError,
              "this record starts a new generation but the trace already holds one: record each generation into a "
              "new DenoisingTrace.")
        if not bool(record.active[self.row]):
            return False
        scalars = {name: (float if name == "temperature" else int)(getattr(record, name)) for name in SCALAR_FIELDS}
        arrays = {name: None if (t := getattr(record, name)) is None else np.array(t[self.row].detach().cpu(), dtype)
                  for name, dtype in ARRAY_DTYPES.items()}
        if arrays["pinned"] is None:  # generate ran without pins
            arrays["pinned"] = np.zeros(L, dtype=bool)
        self.rounds.append(TraceRound(**scalars, **arrays))
        return True

    def finish(self, result: Any = None) -> DenoisingTrace:
        """Mark the trace complete. With the GenerationResult of the run, also take its exact prompt ids
        and settings, and check that the committed canvases are the result's tokens."""
        if result is not None:
            check(self.row < len(result.prompt_ids), InputError, f"this trace follows row {self.row} but the result "
                  f"has {len(result.prompt_ids)} row(s): pass the result of the generate call that fed this trace.")
            self.prompt_ids = list(result.prompt_ids[self.row])
            if self.prompt is None and self.tokenizer is not None:
                self.prompt = self.tokenizer.decode(self.prompt_ids, skip_special_tokens=True)
            self.settings = checked_settings(result.settings)
            ours = self.tokens()
            theirs = result.token_ids[self.row].tolist()
            check(ours == theirs, InputError, f"the result's tokens differ from the canvases this trace recorded "
                  f"(first {min(len(ours), len(theirs))} tokens compared): pass the result of the generate call whose "
                  "on_step fed this trace.")
        self.complete = True
        return self

    # ---- what the rounds show ---------------------------------------------------------------------
    @property
    def num_canvases(self) -> int:
        return len(self.canvas_ranges())

    def canvas_ranges(self) -> list[tuple[int, int, int]]:
        """(canvas_index, first round, end round) for each canvas, in order."""
        out: list[tuple[int, int, int]] = []
        for i, rd in enumerate(self.rounds):
            if out and out[-1][0] == rd.canvas_index:
                out[-1] = (rd.canvas_index, out[-1][1], i + 1)
            else:
                out.append((rd.canvas_index, i, i + 1))
        return out

    def stack(self, name: str) -> np.ndarray | None:
        """One field over all rounds: e.g. stack("entropy") -> [R, L]; scalars give [R]; None for top-k
        fields that were not recorded."""
        if name in SCALAR_FIELDS:
            return np.array([getattr(rd, name) for rd in self.rounds], dtype=np.float64 if name == "temperature"
                            else np.int32)
        check(name in ARRAY_DTYPES, InputError,
              f"unknown trace field {name!r}; fields: {list(SCALAR_FIELDS) + list(ARRAY_DTYPES)}")
        if not self.rounds:
            return None if name.startswith("top_") else np.zeros((0, self.canvas_length or 0), ARRAY_DTYPES[name])
        values = [getattr(rd, name) for rd in self.rounds]
        return None if values[0] is None else np.stack(values)

    def committed(self) -> list[np.ndarray]:
        """The canvas each recorded canvas commits: its last round's argmax, with the end-of-sequence rules
        of generate (pad after the first EOS, all pad after a finished canvas)."""
        eos_ids = self.settings.get("eos_token_ids") or []
        eos = torch.tensor(eos_ids, dtype=torch.long) if eos_ids else None
        pad = int(self.settings.get("pad_token_id", 0))
        finished = torch.zeros(1, dtype=torch.bool)
        out = []
        for _, _, end in self.canvas_ranges():
            canvas = torch.from_numpy(self.rounds[end - 1].argmax_ids.astype(np.int64))[None]
            final, finished = finalize_canvas(canvas, finished, eos, pad, out_of_length=False)
            out.append(final[0].numpy().astype(np.int32))
        return out

    def tokens(self) -> list[int]:
        """The generated token ids, as generate returns them (at most max_new_tokens)."""
        ids = [int(t) for canvas in self.committed() for t in canvas]
        limit = self.settings.get("max_new_tokens")
        return ids[:limit] if limit else ids

    def accepted_counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Per round [R]: tokens accepted, and of those the newly accepted (not accepted the round before)."""
        accepted = self.stack("accepted")
        return accepted.sum(-1), (accepted & ~self.previous_accepted()).sum(-1)

    def previous_accepted(self) -> np.ndarray:
        """[R, L]: each round's view of the round before it in the same canvas (False on a canvas's first)."""
        accepted = self.stack("accepted")
        before = np.zeros_like(accepted)
        for _, start, end in self.canvas_ranges():
            before[start + 1:end] = accepted[start:end - 1]
        return before

    def lock_in_steps(self) -> np.ndarray:
        """[C, L]: the round (1-based) from which each position stayed accepted to its canvas's last round; 0
        where the last round did not accept it (committed from the argmax), -1 where it is pinned."""
        out = np.zeros((self.num_canvases, self.canvas_length or 0), dtype=np.int32)
        for c, (_, start, end) in enumerate(self.canvas_ranges()):
            since = out[c]
            for rd in self.rounds[start:end]:
                # a run of acceptance starts at this round unless the position was accepted in the one before
                since[:] = np.where(rd.accepted, np.where(since > 0, since, rd.step), 0)
            since[self.rounds[end - 1].pinned] = -1
        return out

    def tokens_per_forward(self) -> list[float]:
        """Per canvas: committed non-pad tokens / denoising rounds (generate's definition, per canvas)."""
        pad = int(self.settings.get("pad_token_id", 0))
        return [float((canvas != pad).sum()) / (end - start)
                for canvas, (_, start, end) in zip(self.committed(), self.canvas_ranges())]

    # ---- token text -------------------------------------------------------------------------------
    def token_text(self, ids: np.ndarray | list[int]) -> dict[int, str | None]:
        """Text of each id (decoded one by one, cached in `vocab`); None when no tokenizer knows it."""
        wanted = {int(i) for i in np.asarray(ids).ravel()}
        missing = sorted(wanted - self.vocab.keys())
        if missing:
            if self.tokenizer is not None:
                # readable: a token holding part of a UTF-8 character shows its bytes (\xe3), not U+FFFD or
                # a tofu box; special tokens keep their names (<eos>), which decoding would drop.
                special = set(self.tokenizer.all_special_ids)
                texts = [self.tokenizer.convert_ids_to_tokens(i) if i in special else readable(self.tokenizer, [i])
                         for i in missing]
            else:
                texts = [None] * len(missing)
            self.vocab.update(zip(missing, texts))
        return {i: self.vocab[i] for i in wanted}

    def used_ids(self, start: int = 0) -> np.ndarray:
        """The ids in the rounds from `start` on, the committed canvases and the prompt."""
        parts = [a.ravel() for rd in self.rounds[start:] for a in (rd.canvas_ids, rd.argmax_ids, rd.top_ids)
                 if a is not None]
        parts += self.committed() + [np.asarray(self.prompt_ids or [], dtype=np.int32)]
        return np.unique(np.concatenate(parts))

    # ---- the player's data --------------------------------------------------------------------------
    def round_payload(self, i: int) -> dict[str, Any]:
        """Round i as the player's JSON (entropies and probabilities rounded for size)."""
        rd = self.rounds[i]
        return {"c": rd.canvas_index, "s": rd.step, "n": rd.remaining, "t": round(rd.temperature, 4),
                "ids": rd.canvas_ids.tolist(), "am": rd.argmax_ids.tolist(), "acc": rd.accepted.astype(int).tolist(),
                "h": np.round(rd.entropy.astype(np.float64), 4).tolist(),
                "pin": rd.pinned.astype(int).tolist() if rd.pinned.any() else None,
                "top": None if rd.top_ids is None else rd.top_ids.tolist(),
                "tp": None if rd.top_probs is None else np.round(rd.top_probs.astype(np.float64), 4).tolist()}

    def rounds_message(self, start: int) -> dict[str, Any]:
        """Rounds from `start` on, with the text of their ids and the canvases committed so far."""
        return {"type": "rounds", "trace_id": self.trace_id, "start": start,
                "rounds": [self.round_payload(i) for i in range(start, len(self.rounds))],
                "vocab": {str(k): v for k, v in self.token_text(self.used_ids(start)).items()},
                "committed": {str(c): canvas.tolist() for c, canvas in enumerate(self.committed())}}

    def to_payload(self) -> dict[str, Any]:
        """Everything the player shows, as JSON-ready data (also what save_html embeds)."""
        entropy = self.stack("entropy")
        meta = dict(self._meta(), pad_token_id=int(self.settings.get("pad_token_id", 0)),
                    entropy_max=float(entropy.max()) if entropy.size else 0.0)
        message = self.rounds_message(0)
        return {"format": FORMAT, "version": VERSION, "trace_id": self.trace_id, "meta": meta,
                "vocab": message["vocab"], "rounds": message["rounds"], "committed": message["committed"]}

    # ---- files --------------------------------------------------------------------------------------
    def to_document(self) -> dict[str, Any]:
        rounds = {name: self.stack(name).tolist() for name in SCALAR_FIELDS}
        rounds.update({name: None if (arr := self.stack(name)) is None else encode_array(arr, dtype)
                       for name, dtype in ARRAY_DTYPES.items()})
        vocab = {str(k): v for k, v in sorted(self.token_text(self.used_ids()).items())}
        return {"format": FORMAT, "version": VERSION, "meta": self._meta(), "vocab": vocab, "rounds": rounds}

    def _meta(self) -> dict[str, Any]:
        return {"canvas_length": self.canvas_length, "vocab_size": self.vocab_size, "row": self.row,
                "prompt": self.prompt, "prompt_ids": self.prompt_ids, "settings": self.settings, "title": self.title,
                "complete": self.complete}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the trace (gzip JSON, or plain JSON for a name ending in .json), atomically."""
        path = _out_path(path)
        data = json.dumps(self.to_document(), ensure_ascii=False, separators=(",", ":")).encode()
        with atomic_file(path) as tmp:
            with open(tmp, "wb") if path.name.endswith(".json") else gzip.open(tmp, "wb", compresslevel=6) as f:
                f.write(data)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, max_bytes: int | None = None) -> DenoisingTrace:
        """Read a trace saved by `save`; a bad file or field is a TraceError naming it. `max_bytes` raises the
        limit on the inflated JSON (default: trace_file.inflate_limit of the file's size)."""
        return cls.from_document(read_document(path, max_bytes), source=str(path))

    @classmethod
    def from_document(cls, doc: Any, source: str = "the trace") -> DenoisingTrace:
        """A trace from its document (the JSON value of a file), every field checked first."""
        meta, vocab, rounds = parse_document(doc, source)
        complete = meta.pop("complete")
        trace = cls(**meta)
        trace.complete, trace.vocab = complete, vocab
        trace.rounds = [TraceRound(**{name: None if column is None else column[i] for name, column in rounds.items()})
                        for i in range(len(rounds["canvas_index"]))]
        return trace

    # ---- exports (the drawing lives in plots/denoising.py and player_html.py) ---------------------------------
    def save_html(self, path: str | os.PathLike, *, speed: float = 4.0) -> Path:
        """One self-contained HTML file that plays this trace offline (no network, no CDN)."""
        return atomic_write(_out_path(path), player_html(self.to_payload(), speed=_rate(speed, "speed")))

    def save_gif(self, path: str | os.PathLike, *, fps: float = 4.0, canvases: list[int] | None = None) -> Path:
        """An animated GIF of the rounds (matplotlib + Pillow), one frame per round."""
        from ..plots.denoising import animate  # lazy: matplotlib is an optional, heavy dependency

        return animate(self, _out_path(path), fps=_rate(fps, "fps"), canvases=_canvases(canvases), writer="pillow")

    def save_mp4(self, path: str | os.PathLike, *, fps: float = 4.0, canvases: list[int] | None = None) -> Path:
        """An MP4 of the rounds (matplotlib + ffmpeg; a clear error says how to install ffmpeg if missing)."""
        from ..plots.denoising import animate  # lazy: matplotlib is an optional, heavy dependency

        return animate(self, _out_path(path), fps=_rate(fps, "fps"), canvases=_canvases(canvases), writer="ffmpeg")


# ---- helpers ----------------------------------------------------------------------------------------
def _out_path(path: Any) -> Path:
    check(isinstance(path, (str, os.PathLike)) and str(path), InputError,
          f"an output path must be a non-empty str or pathlib.Path (got {path!r:.80}).")
    return Path(path)


def _rate(value: Any, name: str) -> float:
    check(type(value) in (int, float) and math.isfinite(value) and value > 0, InputError,
          f"{name} must be a finite number > 0, in rounds per second (got {value!r:.80}).")
    return float(value)


def _canvases(canvases: Any) -> list[int] | None:
    check(canvases is None or (isinstance(canvases, (list, tuple, range)) and all(type(c) is int for c in canvases)),
          InputError, f"canvases must be a list of canvas indices, or None for all (got {canvases!r:.80}).")
    return None if canvases is None else list(canvases)
