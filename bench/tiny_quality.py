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
from pathlib import Path

from dgemma_helpers.train.quality_eval import measure_quality


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/dgemma-tiny")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--no-transformers", action="store_true")
    p.add_argument("--json", help="also write the numbers here")
    p.add_argument("--sweep", action="store_true",
                   help="instead: the sampler-settings sweep behind the model's generation_config.json defaults")
    p.add_argument("--card", metavar="RUN_DIR",
                   help="also rewrite the model's MODEL_CARD.md from its training run (e.g. runs/dgemma-tiny), "
                        "these measurements and the sweep")
    args = p.parse_args()
    if args.sweep:
        print(sweep_table(args.model, args.prompts, args.max_new_tokens))
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
    if args.card:
        from dgemma_helpers.train.recipe import device_name, model_card, result_from_run

        result, config = result_from_run(args.model, args.card)
        sweep = sweep_table(args.model, args.prompts, args.max_new_tokens)
        (Path(args.model) / "MODEL_CARD.md").write_text(model_card(result, config, report, device_name("cpu"),
                                                                   sampler_sweep=sweep))
        print(f"wrote {Path(args.model) / 'MODEL_CARD.md'}")


def sweep_table(model: str, prompts: int, max_new_tokens: int) -> str:
    """The sampler sweep behind the tiny model's defaults, as a markdown table."""
    from dgemma_helpers.train.quality_eval import sampler_table

    # The published defaults, then wider entropy bounds (1000 nats > 64 * ln 4096: every position
    # accepted) x temperature schedules, with confidence thresholds a small model can reach.
    grid = [dict(entropy_bound=0.1, t_max=0.8, t_min=0.4, confidence_threshold=0.005),
            dict(entropy_bound=20.0, t_max=0.8, t_min=0.4, confidence_threshold=0.05)]
    grid += [dict(entropy_bound=1000.0, t_max=hi, t_min=lo, confidence_threshold=c)
             for hi, lo in ((0.6, 0.3), (0.8, 0.4), (0.9, 0.5), (1.0, 0.6)) for c in (0.05, 0.1)]
    lines = ["| entropy bound | t_max | t_min | confidence | word validity | words/token | tokens/forward "
             "| steps/canvas |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sampler_table(model, grid, prompts=prompts, max_new_tokens=max_new_tokens):
        lines.append(f"| {r['entropy_bound']:g} | {r['t_max']:g} | {r['t_min']:g} | {r['confidence_threshold']:g} "
                     f"| {100 * r['validity']:.1f}% | {r['words_per_token']:.2f} | {r['tokens_per_forward']:.2f} "
                     f"| {r['steps_per_canvas']:.1f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
