"""Traces the trace tests share: one recorded generation of a small random checkpoint, and its
document written back to a file (for the tests to break)."""

from __future__ import annotations

import json

import pytest

import dgemma_helpers as dg
from dgemma_helpers.visualization.trace import DenoisingTrace


def generate_traced(model, prompt="The sky is", **kwargs):
    trace = DenoisingTrace.from_model(model, prompt=prompt)
    settings = dict(max_new_tokens=40, max_denoising_steps=6, seed=3, record_topk=3)
    settings.update(kwargs)
    result = dg.generate(model, prompt, on_step=trace.record, **settings)
    return trace.finish(result), result


@pytest.fixture(scope="module")
def recorded(checkpoint, ours):
    return generate_traced(ours(checkpoint("confident")))


def _document(trace: DenoisingTrace) -> dict:
    return json.loads(json.dumps(trace.to_document()))


def _write(tmp_path, doc, name="bad.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path
