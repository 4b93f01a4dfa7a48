"""Text-quality measures for small models, cheap and with no judge model: word validity (the share of
generated words found in the training corpus: near 0 for an untrained model, near 1 for one that
spells) and, since validity rewards repetition, distinct_ngrams beside it (the same line five times:
about 0.2)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

VOCABULARY_FILE = "train_words.txt"
_WORD = re.compile(r"[a-z]+(?:'[a-z]+)*")


def words(text: str) -> list[str]:
    """Lower-cased words: runs of letters with inner apostrophes ("o'er", "mak'st")."""
    return _WORD.findall(text.lower())


def word_validity(texts: Iterable[str], vocabulary: set[str]) -> float:
    """Share of the words in `texts` found in `vocabulary` (nan when there are no words)."""
    found = [w in vocabulary for text in texts for w in words(text or "")]
    return sum(found) / len(found) if found else float("nan")


def distinct_ngrams(texts: Iterable[str], n: int = 3) -> float:
    """Distinct word n-grams / all word n-grams, counted within each text (nan when no text has n words)."""
    distinct = total = 0
    for text in texts:
        w = words(text or "")
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        distinct += len(set(grams))
        total += len(grams)
    return distinct / total if total else float("nan")


def load_vocabulary(model_dir: str | Path) -> set[str]:
    """The training vocabulary shipped with a model (one word per line in train_words.txt)."""
    path = Path(model_dir) / VOCABULARY_FILE
    if not path.exists():
        raise InputError(f"{path} not found: word validity needs the training vocabulary that models/dgemma-tiny "
                         "ships; for other models use held-out likelihood instead.")
    return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
