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
    p.add_argument("--sweep", action="store_true",
                   help="instead: the sampler-settings sweep behind the model's generation_config.json defaults")
    args = p.parse_args()
    if args.sweep:
        from dgemma_helpers.train.quality_eval import sampler_table

        grid = [dict(confidence_threshold=c, entropy_bound=b) for b in (0.1, 0.3) for c in (0.005, 0.02, 0.05, 0.1, 0.2)]
        print(f"{'entropy bound':>14}{'confidence':>12}{'validity':>10}{'tok/fwd':>9}{'steps/canvas':>14}")
        for r in sampler_table(args.model, grid, max_new_tokens=args.max_new_tokens):
            print(f"{r['entropy_bound']:>14}{r['confidence_threshold']:>12}{100 * r['validity']:>9.1f}%"
                  f"{r['tokens_per_forward']:>9.2f}{r['steps_per_canvas']:>14.1f}")
        return
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
