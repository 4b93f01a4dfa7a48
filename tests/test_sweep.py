"""The sampler sweep, the per-round log and infilling (sweep.py, infill.py)."""

from __future__ import annotations

import pytest

import dgemma_helpers as dg
from dgemma_helpers import plots
from dgemma_helpers.notebook.sweep import canvas_texts, format_sweep
from dgemma_helpers.notebook.tables import format_table, records

PROMPT = "The sky is blue because"


def test_sweep_rows_count_forwards_and_tokens(checkpoint, ours):
    model = ours(checkpoint("plain"))
    L = model.config.canvas_length
    rows = dg.notebook.sampler_sweep(model, PROMPT, grid={"max_denoising_steps": [2, 4]}, max_new_tokens=L,
                            confidence_threshold=0.0, eos_token_ids=[])
    assert [(r.knob, r.value) for r in rows] == [("max_denoising_steps", 2), ("max_denoising_steps", 4)]
    for r, steps in zip(rows, (2, 4)):
        assert r.max_denoising_steps == steps and r.forwards == steps and r.steps_per_canvas == [steps]
        assert r.new_tokens == L and r.tokens_per_forward == pytest.approx(L / steps)
        assert isinstance(r.text, str) and not r.adaptive_stopping
    table = records(rows)
    assert set(table[0]) >= {"knob", "value", "tokens_per_forward", "forwards", "steps_per_canvas",
                             "accepted_per_round", "text"}
    assert "max_denoising_steps" in format_sweep(rows)


def test_entropy_bound_sets_how_many_tokens_a_round_accepts(checkpoint, ours):
    model = ours(checkpoint("plain"))
    L = model.config.canvas_length
    tight, loose = dg.notebook.sampler_sweep(model, PROMPT, grid={"entropy_bound": [1e-6, 1e3]}, max_new_tokens=L,
                                    max_denoising_steps=3, confidence_threshold=0.0)
    # An untrained model is unsure everywhere: a tiny bound lets one token through per round,
    # a huge one every position.
    assert tight.accepted_per_round == 1.0
    assert loose.accepted_per_round == L
    assert (tight.entropy_bound, loose.entropy_bound) == (1e-6, 1e3)


def test_adaptive_stopping_and_temperature_knobs(checkpoint, ours):
    model = ours(checkpoint("plain"))
    L = model.config.canvas_length
    # stability 0 + a huge confidence threshold: adaptive stopping fires after the first round.
    on, off = dg.notebook.sampler_sweep(model, PROMPT, grid={"adaptive_stopping": [True, False]}, max_new_tokens=2 * L,
                               max_denoising_steps=4, stability_threshold=0, confidence_threshold=100.0,
                               eos_token_ids=[])
    assert on.adaptive_stopping and on.steps_per_canvas == [1, 1] and on.forwards == 2
    assert not off.adaptive_stopping and off.steps_per_canvas == [4, 4] and off.forwards == 8
    assert on.tokens_per_forward == pytest.approx(L) and off.tokens_per_forward == pytest.approx(L / 4)
    (cold,) = dg.notebook.sampler_sweep(model, PROMPT, grid={"temperature": [(0.1, 0.3)]}, max_new_tokens=L,
                               max_denoising_steps=2)
    assert (cold.t_min, cold.t_max, cold.label) == (0.1, 0.3, "t 0.1->0.3")


def test_round_log_follows_the_schedule_and_the_batch(checkpoint, ours):
    model = ours(checkpoint("plain"))
    L, N = model.config.canvas_length, 4
    log = dg.notebook.RoundLog(row=1, tokenizer=model.tokenizer)
    result = dg.generate(model, ["One", "Two words"], max_new_tokens=2 * L, max_denoising_steps=N,
                         t_min=0.2, t_max=1.0, confidence_threshold=0.0, eos_token_ids=[], seed=1, on_step=log)
    assert [(x["canvas"], x["step"]) for x in log.rounds] == [(c, s) for c in range(2) for s in range(1, N + 1)]
    temps = [x["temperature"] for x in log.rounds[:N]]
    assert temps == pytest.approx([0.2 + 0.8 * n / N for n in range(N, 0, -1)])
    assert all(1 <= x["accepted"] <= L and isinstance(x["guess"], str) for x in log.rounds)
    assert log.mean_accepted() == pytest.approx(sum(x["accepted"] for x in log.rounds) / len(log.rounds))
    assert len(canvas_texts(model, result, row=1)) == 2


def test_sweep_refuses_bad_grids_before_running(checkpoint, ours):
    model = ours(checkpoint("plain"))
    with pytest.raises(dg.InputError, match="choose from"):
        dg.notebook.sampler_sweep(model, PROMPT, grid={"steps": [1]})
    with pytest.raises(dg.InputError, match="t_max must be greater"):
        dg.notebook.sampler_sweep(model, PROMPT, grid={"max_denoising_steps": [2], "temperature": [(0.8, 0.4)]})
    with pytest.raises(dg.InputError, match=r"\(t_min, t_max\) pairs"):
        dg.notebook.sampler_sweep(model, PROMPT, grid={"temperature": [0.5]})
    with pytest.raises(dg.InputError, match="no values"):
        dg.notebook.sampler_sweep(model, PROMPT, grid={"entropy_bound": []})
    with pytest.raises(dg.InputError, match="one prompt"):
        dg.notebook.sampler_sweep(model, [PROMPT, PROMPT])


def test_infilling_keeps_the_pinned_ends(checkpoint, ours):
    model = ours(checkpoint("plain"))
    L = model.config.canvas_length
    fill = dg.notebook.infill_canvas(model, "Block diffusion", "next canvas.")
    pre, suf = model.tokenizer.encode("Block diffusion", add_special_tokens=False), \
        model.tokenizer.encode("next canvas.", add_special_tokens=False)
    assert fill.canvas[:len(pre)].tolist() == pre and fill.canvas[L - len(suf):].tolist() == suf
    assert fill.pinned.sum() == len(pre) + len(suf) and not fill.pinned[fill.middle].any()
    result = dg.generate(model, input_ids=[model.config.bos_token_id], seed=0, max_denoising_steps=3,
                         **fill.generate_kwargs())
    out = result.token_ids[0]
    assert out.shape == (L,)
    assert out[:len(pre)].tolist() == pre and out[L - len(suf):].tolist() == suf
    assert fill.middle_text(model, result) == model.tokenizer.decode(out[fill.middle].tolist(),
                                                                     skip_special_tokens=True)


def test_infilling_refuses_what_does_not_fit(checkpoint, ours):
    model = ours(checkpoint("plain"))
    L, V = model.config.canvas_length, model.config.vocab_size
    with pytest.raises(dg.InputError, match="no room"):
        dg.notebook.infill_canvas(model, list(range(3, 3 + L // 2)), list(range(3, 3 + L - L // 2)))
    with pytest.raises(dg.InputError, match="outside the vocabulary"):
        dg.notebook.infill_canvas(model, [V + 1], [])


def test_format_table_lines_up_rows():
    text = format_table([{"name": "a", "count": 12345, "share": 0.123456}, {"name": "bb", "count": 7, "share": 1.0}])
    lines = text.splitlines()
    assert lines[0].split() == ["name", "count", "share"] and len({len(x) for x in lines}) == 1
    assert "12,345" in text and "0.1235" in text
    assert format_table([]) == "(no rows)"


def test_sweep_runs_each_distinct_setting_once(checkpoint, ours, monkeypatch):
    import dgemma_helpers.notebook.sweep as sweep_module

    model = ours(checkpoint("plain"))
    calls = []
    real = sweep_module.generate

    def counting(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(sweep_module, "generate", counting)
    # entropy_bound 0.1 and the (0.4, 0.8) schedule are the checkpoint's defaults: the same run.
    rows = dg.notebook.sampler_sweep(model, PROMPT, grid={"entropy_bound": [0.1, 2.0], "temperature": [(0.4, 0.8)]},
                            max_new_tokens=model.config.canvas_length, max_denoising_steps=2)
    assert len(rows) == 3 and len(calls) == 2
    assert (rows[2].knob, rows[2].value) == ("temperature", (0.4, 0.8))
    assert rows[2].text == rows[0].text and rows[2].forwards == rows[0].forwards


def test_the_sweep_scores_word_validity_where_the_model_ships_a_vocabulary(checkpoint, ours):
    model = ours(checkpoint("plain"))
    grid = {"max_denoising_steps": [2, 3], "entropy_bound": [1e-6, 1e3]}
    bare = dg.notebook.sampler_sweep(model, PROMPT, grid=grid, max_new_tokens=8)
    assert all(r.word_validity is None for r in bare) and "word_validity" not in format_sweep(bare)
    fig = plots.plot_sweep(bare)  # one row per quantity, one column per setting, a label per row
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["tokens per forward", "accepted per round"]
    assert fig.axes[0].get_title() == "max denoising steps" and fig.get_suptitle()
    tiny = dg.load_model(dg.find_model("models/dgemma-tiny"))
    (row,) = dg.notebook.sampler_sweep(tiny, "ROMEO:\n", grid={"max_denoising_steps": [4]}, max_new_tokens=16)
    assert 0.0 <= row.word_validity <= 1.0 and "word_validity" in format_sweep([row])
    assert [ax.get_ylabel() for ax in plots.plot_sweep([row]).axes] == ["tokens per forward", "accepted per round",
                                                                         "word validity"]
