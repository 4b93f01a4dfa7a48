"""Quality of the small trained model, printed as a table (recorded in BENCHMARKS.md and the model card).

    python bench/tiny_quality.py --model models/dgemma-tiny

Held-out denoising cross-entropy at several noise levels against a unigram baseline; word validity
of generated text against the training vocabulary, for the model and for an untrained model of the
same shape; tokens per forward and denoising steps per canvas with the default adaptive stopping;
and the same checkpoint generating through transformers' generate, scored the same way.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dgemma_helpers.train.quality_eval import measure_quality  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/dgemma-tiny")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--json", help="also write the numbers here")
    args = p.parse_args()
    report = measure_quality(args.model, prompts=args.prompts, max_new_tokens=args.max_new_tokens,
                             with_transformers=not args.no_transformers)
    for prompt, text in report.samples:
        print(f"> {prompt}\n{text}\n")
    print(report.table())
    print(f"\n({report.seconds:.0f} s)")
    if args.json:
        data = dict(vars(report))
        data["heldout_ce"] = {str(k): v for k, v in report.heldout_ce.items()}
        Path(args.json).write_text(json.dumps(data, indent=2))


if __name__ == "__main__":
    main()
