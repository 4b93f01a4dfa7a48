"""Image prompts against transformers: the processor's token expansion, the encoder's logits over
image prompts (bidirectional image blocks, as generate() builds the masks), whole generations with
pixel_values, and every bad image input refused with the fix."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, DiffusionGemmaForBlockDiffusion
from transformers.cache_utils import DynamicCache
from transformers.models.diffusion_gemma.generation_diffusion_gemma import EntropyBoundSamplerConfig
from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil
from transformers.models.gemma4.processing_gemma4 import Gemma4Processor
from transformers.processing_utils import ProcessorMixin

import dgemma_helpers as dg
from dgemma_helpers import generation
from dgemma_helpers.cache import KVCache
from dgemma_helpers.checkpoint import weights_bytes
from dgemma_helpers.cli import main
from dgemma_helpers.config import TINY_VISION_CONFIG
from dgemma_helpers.inputs import prompt_batch, prompt_inputs
from dgemma_helpers.train.random_checkpoint import make_random_checkpoint
from dgemma_helpers.vision import MAX_IMAGES, is_placeholder, prompt_embeddings

# A small real tower (not the placeholder): 8-pixel patches pooled 2x2, 70 soft tokens at most.
VISION = {"model_type": "gemma4_vision", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 16, "patch_size": 8,
          "pooling_kernel_size": 2, "position_embedding_size": 256}
REL_TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def picture(h: int, w: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), dtype=np.uint8))


def chat(n_images: int, question: str = "What is in this picture?") -> list[dict]:
    # Different sizes and aspect ratios: different soft-token counts per image.
    images = [{"type": "image", "image": picture(40 + 24 * i, 56 - 8 * i, seed=i)} for i in range(n_images)]
    return [{"role": "user", "content": images + [{"type": "text", "text": question}]}]


@pytest.fixture(scope="module")
def path(tmp_path_factory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("vision") / "ckpt", embed_std=1.0, vision_config=VISION)


@pytest.fixture(scope="module")
def model(path):
    return dg.load_model(path, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def ref(path):
    return DiffusionGemmaForBlockDiffusion.from_pretrained(path, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def processor(path):
    """transformers' own Gemma4Processor over the checkpoint's tokenizer and processor_config.json.
    Its constructor insists on an audio feature extractor and a video processor (the latter needs
    torchvision), and its input check on audio tokens even for images: none of them plays a part in
    image prompts, so the class check is bypassed and the audio tokens are declared."""
    tok = AutoTokenizer.from_pretrained(path, extra_special_tokens={
        "image_token": "<|image|>", "boi_token": "<|image>", "eoi_token": "<image|>",
        "audio_token": "<|audio|>", "boa_token": "<|audio>", "eoa_token": "<audio|>"})
    tok.padding_side = "left"
    settings = json.loads((path / "processor_config.json").read_text())["image_processor"]
    images = Gemma4ImageProcessorPil(**{k: v for k, v in settings.items()
                                        if k not in ("image_processor_type", "image_seq_length")})
    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        return Gemma4Processor(feature_extractor=None, image_processor=images, tokenizer=tok, video_processor=None,
                               chat_template=tok.chat_template, image_seq_length=settings["max_soft_tokens"])
    finally:
        ProcessorMixin.check_argument_for_proper_class = check


def reference_inputs(processor, chats: list[list[dict]]) -> dict:
    return processor.apply_chat_template(chats, add_generation_prompt=True, tokenize=True, return_dict=True,
                                         return_tensors="pt", padding=True)


def reference_encoder_logits(ref, inputs: dict) -> torch.Tensor:
    """The encoder over the prompt as generate() runs it: the mask mapping from
    create_masks_for_generate with mm_token_type_ids, passed in (a direct encoder call builds the
    image-block masks and then discards them, reading images causally)."""
    ids, mask = inputs["input_ids"], inputs["attention_mask"].bool()
    B, P = ids.shape
    cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
    positions = torch.arange(P, dtype=torch.int32)[None]
    masks = ref.model.encoder.create_masks_for_generate(
        config=ref.config, inputs_embeds=torch.empty(B, P, 0), attention_mask=mask, cache=cache,
        position_ids=positions, mm_token_type_ids=inputs["mm_token_type_ids"])
    with torch.no_grad():
        hidden = ref.model.encoder(input_ids=ids, pixel_values=inputs["pixel_values"],
                                   image_position_ids=inputs["image_position_ids"], attention_mask=masks,
                                   cache=cache, position_ids=positions).last_hidden_state
        cap = ref.config.get_text_config().final_logit_softcapping
        return torch.tanh(ref.lm_head(hidden).float() / cap) * cap


def our_encoder_logits(model, chats, bidirectional: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, valid, _, images = prompt_inputs(model, None, chats, None, None, 0)
    embeds, blocks = prompt_embeddings(model, ids, valid, images)
    cache = KVCache(model.config, ids.shape[0], ids.shape[1], device="cpu", dtype=torch.float32)
    with torch.no_grad():
        hidden = model.encode(ids, cache, valid, embeds=embeds, blocks=blocks if bidirectional else None)
    return model.logits(hidden), ids, valid


@pytest.mark.parametrize("counts", [[1], [2], [2, 1]], ids=["one-image", "two-images", "batch-of-1-and-2"])
def test_encoder_logits_over_image_prompts_match_reference(model, ref, processor, counts):
    chats = [chat(n) for n in counts]
    inputs = reference_inputs(processor, chats)
    expected = reference_encoder_logits(ref, inputs)
    mine, ids, valid = our_encoder_logits(model, chats)
    # The same expansion as Gemma4Processor: boi, N image tokens (N from the image processor), eoi.
    assert torch.equal(ids, inputs["input_ids"]) and torch.equal(valid, inputs["attention_mask"].bool())
    assert (ids == model.config.image_token_id).sum() > 50 * sum(counts)
    assert rel_err(mine[valid], expected[valid]) < REL_TOL
    # The image blocks' bidirectional attention matters: a causal encoder gives other logits.
    causal, _, _ = our_encoder_logits(model, chats, bidirectional=False)
    assert rel_err(causal[valid], expected[valid]) > 1e-3


def test_near_greedy_generation_with_images_matches_reference(model, ref, processor):
    """Rows with different image counts, left-padded; same initial canvas, near-greedy: same ids."""
    chats = [chat(2, "Describe both."), chat(1)]
    inputs = reference_inputs(processor, chats)
    V, L = model.config.vocab_size, model.config.canvas_length
    start = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(9))
    settings = dict(max_new_tokens=32, max_denoising_steps=6, t_min=1e-3, t_max=2e-3)
    torch.manual_seed(4)
    out = ref.generate(inputs["input_ids"], attention_mask=inputs["attention_mask"],
                       pixel_values=inputs["pixel_values"], image_position_ids=inputs["image_position_ids"],
                       mm_token_type_ids=inputs["mm_token_type_ids"], decoder_input_ids=start, eos_token_id=[],
                       sampler_config=EntropyBoundSamplerConfig(entropy_bound=0.1), **settings)
    expected = out.sequences[:, inputs["input_ids"].shape[1]:]
    result = dg.generate(model, messages=chats, initial_canvas=start, seed=4, rng="transformers", eos_token_ids=[],
                         **settings)
    assert torch.equal(result.token_ids, expected[:, :32])
    # ... and the images make a difference to what is generated.
    text_only = dg.generate(model, messages=[[{"role": "user", "content": "Describe both."}]] * 2,
                            initial_canvas=start, seed=4, eos_token_ids=[], **settings)
    assert not torch.equal(text_only.token_ids, result.token_ids)


def test_prefill_chunks_never_split_an_image_block(model, monkeypatch):
    """Prefill in chunks much shorter than an image: boundaries move to block edges, and the
    prompt's encoding is the one-chunk encoding."""
    chats = [chat(2), chat(1)]
    ids, valid, _, images = prompt_inputs(model, None, chats, None, None, 0)
    embeds, blocks = prompt_embeddings(model, ids, valid, images)
    bounds = generation.chunk_bounds(blocks, ids.shape[1], 20)
    assert bounds[0] == 0 and bounds[-1] == ids.shape[1] and len(bounds) > 3
    for b in bounds[1:-1]:
        assert not bool(((blocks[:, b] >= 0) & (blocks[:, b] == blocks[:, b - 1])).any())
    whole = KVCache(model.config, 2, ids.shape[1], device="cpu", dtype=torch.float32)
    one = generation.prefill(model, ids, whole, valid, embeds=embeds, blocks=blocks)
    assert one.shape[1] == ids.shape[1]  # a single chunk
    monkeypatch.setattr(generation, "PREFILL_CHUNK", 20)
    chunked = KVCache(model.config, 2, ids.shape[1], device="cpu", dtype=torch.float32)
    parts = []
    last = generation.prefill(model, ids, chunked, valid, embeds=embeds, blocks=blocks,
                              on_chunk=lambda start, hidden: parts.append((start, hidden)))
    assert [start for start, _ in parts] == bounds[:-1] and last is parts[-1][1]
    parts = [hidden for _, hidden in parts]
    assert rel_err(torch.cat(parts, dim=1)[valid], one[valid]) < REL_TOL


def test_vision_tower_load_notes_and_memory(path, model, tmp_path, capfd):
    assert model.vision is not None and model.vision.processor["max_soft_tokens"] == 70
    assert model.vision.num_parameters() > 0
    shapes = {n: tuple(t.shape) for n, t in load_file(path / "model.safetensors").items()
              if n.startswith(("model.encoder.vision_tower.", "model.encoder.embed_vision."))}
    extra = weights_bytes(model.config, torch.float32, shapes) - weights_bytes(model.config, torch.float32)
    assert extra == 4 * model.vision.num_parameters()  # the estimate counts the tower
    capfd.readouterr()
    text_only = dg.load_model(path, device="cpu", vision=False)
    notes = [line for line in capfd.readouterr().err.splitlines() if "vision" in line]
    assert text_only.vision is None and notes == [
        f"dgemma_helpers: text-only engine: skipped the {len(shapes)} vision-tower tensors"]
    with pytest.raises(dg.InputError, match="loaded with vision=False: load it again without vision=False"):
        dg.generate(text_only, messages=chat(1), max_new_tokens=8)
    with pytest.raises(dg.InputError, match="vision must be None"):
        dg.load_model(path, vision="yes")


def test_save_checkpoint_keeps_a_loaded_vision_tower(model, tmp_path):
    """The tower, its vision_config and the processor settings are written back: the saved model
    reads an image prompt exactly as the loaded one (and transformers loads the file)."""
    saved = dg.save_checkpoint(model, tmp_path / "saved", tokenizer=model.tokenizer)
    again = dg.load_model(saved, device="cpu", dtype="float32")
    assert again.vision is not None and again.vision.processor == model.vision.processor
    batch = [prompt_inputs(m, None, [chat(2)], None, None, 0) for m in (model, again)]
    assert batch[0][0].tolist() == batch[1][0].tolist()
    logits = []
    for m, (ids, valid, _, images) in zip((model, again), batch):
        embeds, blocks = prompt_embeddings(m, ids, valid, images)
        cache = KVCache(m.config, 1, ids.shape[1], device="cpu", dtype=torch.float32)
        logits.append(m.logits(generation.prefill(m, ids, cache, valid, embeds=embeds, blocks=blocks)))
    assert torch.equal(logits[0], logits[1])
    DiffusionGemmaForBlockDiffusion.from_pretrained(saved, dtype=torch.float32)


@pytest.fixture(scope="module")
def placeholder(tmp_path_factory) -> Path:
    return make_random_checkpoint(tmp_path_factory.mktemp("placeholder") / "ckpt")


def test_placeholder_and_missing_towers_refuse_images_with_the_fix(placeholder, tmp_path, capfd):
    model = dg.load_model(placeholder, device="cpu")
    assert model.vision is None and "untrained placeholder" in model.vision_note
    assert "vision" not in capfd.readouterr().err  # quiet on load: the refusal below says it where it matters
    with pytest.raises(dg.InputError, match="untrained placeholder.*google/diffusiongemma-26B-A4B-it"):
        dg.generate(model, messages=chat(1), max_new_tokens=8)
    with pytest.raises(dg.CheckpointError, match="vision=True.*placeholder.*trained vision tower"):
        dg.load_model(placeholder, vision=True)
    # No tower at all: the vision tensors and vision_config removed.
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in placeholder.iterdir():
        if f.name not in ("model.safetensors", "config.json"):
            (bare / f.name).write_bytes(f.read_bytes())
    tensors = {n: t for n, t in load_file(placeholder / "model.safetensors").items() if "vision" not in n}
    save_file(tensors, bare / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((placeholder / "config.json").read_text())
    config.pop("vision_config")
    (bare / "config.json").write_text(json.dumps(config))
    model = dg.load_model(bare, device="cpu")
    with pytest.raises(dg.InputError, match="has no vision tower.*google/diffusiongemma-26B-A4B-it"):
        dg.generate(model, messages=chat(1), max_new_tokens=8)
    with pytest.raises(dg.CheckpointError, match="no vision tower"):
        dg.load_model(bare, vision=True)


def test_placeholder_is_recognised_by_its_config():
    assert is_placeholder(dict(TINY_VISION_CONFIG, rms_norm_eps=1e-6)) and not is_placeholder(VISION)


def _image_chat(image) -> list[dict]:
    return [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]


@pytest.mark.parametrize("bad, message", [
    ("/no/such/picture.png", "does not exist.*local image file"),
    ("NOT_AN_IMAGE", "could not be read as an image.*readable image file"),
    (42, "is a int; give a PIL image or a local image file path"),
    (np.zeros((8, 8, 3), dtype=np.uint8), "is a ndarray; give a PIL image"),
    ("https://example.com/cat.png", "URL.*never downloads.*local file path"),
    ("data:image/png;base64,AAAA", "URL.*never downloads"),
], ids=["missing", "unreadable", "int", "array", "url", "data-url"])
def test_bad_images_are_refused_with_the_fix(model, tmp_path, bad, message):
    if isinstance(bad, str) and bad == "NOT_AN_IMAGE":
        bad = tmp_path / "notes.png"
        bad.write_text("this is text, not a PNG")
    with pytest.raises(dg.InputError, match=message):
        dg.generate(model, messages=_image_chat(bad), max_new_tokens=8)


@pytest.mark.parametrize("content, message", [
    ([{"type": "video", "video": "clip.mp4"}], "part 0 has type 'video'; the kit reads 'text' and 'image'"),
    ([{"type": "text"}], "part 0 is a text part whose 'text' is NoneType"),
    ([{"type": "image"}], "part 0 is an image part without its image"),
    ([{"type": "image", "url": "http://x/y.png"}], "by 'url'.*never downloads"),
    (["just a string"], "part 0 must be a dict with a 'type'"),
    ([], "non-empty list of parts"),
    (7, "give the message text as a string"),
], ids=["video", "text-without-text", "image-without-image", "url-key", "bare-string", "empty", "int"])
def test_bad_content_parts_are_refused_by_name(model, content, message):
    with pytest.raises(dg.InputError, match=message):
        dg.generate(model, messages=[{"role": "user", "content": content}], max_new_tokens=8)


def test_too_many_images_and_text_parts(model):
    img = picture(16, 16, 0)
    many = [{"role": "user", "content": [{"type": "image", "image": img}] * (MAX_IMAGES + 1)}]
    with pytest.raises(dg.InputError, match=f"holds {MAX_IMAGES + 1} images; the kit takes at most {MAX_IMAGES}"):
        dg.generate(model, messages=many, max_new_tokens=8)
    # Text-only part lists read as the joined text, the way Gemma's template joins them.
    parts = dg.generate(model, messages=[{"role": "user", "content": [{"type": "text", "text": "Why is "},
                                                                        {"type": "text", "text": "the sky blue?"}]}],
                        max_new_tokens=8, max_denoising_steps=2, seed=0)
    plain = dg.generate(model, messages=[{"role": "user", "content": "Why isthe sky blue?"}], max_new_tokens=8,
                        max_denoising_steps=2, seed=0)
    assert parts.prompt_ids == plain.prompt_ids


def test_prompt_length_counts_the_image_tokens(tmp_path):
    short = make_random_checkpoint(tmp_path / "short", vision_config=VISION, max_position_embeddings=96)
    model = dg.load_model(short, device="cpu")
    with pytest.raises(dg.InputError, match=r"the prompt \(\d+ tokens\) plus 1 canvas.*context of 96 tokens"):
        dg.generate(model, messages=chat(1), max_new_tokens=16)  # ~70 image tokens + text + a 16-token canvas


def test_image_paths_and_cli(model, path, tmp_path, capsys):
    file = tmp_path / "pic.png"
    picture(40, 56, 0).save(file)
    by_path = dg.generate(model, messages=_image_chat(file), max_new_tokens=8, max_denoising_steps=2, seed=0)
    by_str = dg.generate(model, messages=_image_chat(str(file)), max_new_tokens=8, max_denoising_steps=2, seed=0)
    by_pil = dg.generate(model, messages=_image_chat(Image.open(file)), max_new_tokens=8, max_denoising_steps=2,
                         seed=0)
    assert torch.equal(by_path.token_ids, by_pil.token_ids) and by_str.prompt_ids == by_pil.prompt_ids
    rc = main(["generate", "--model", str(path), "--chat", "What?", "--image", str(file), "--image", str(file),
               "--max-new-tokens", "8", "--steps", "2", "--device", "cpu"])
    assert rc in (0, None)
    rc = main(["generate", "--model", str(path), "--chat", "What?", "--image", str(tmp_path / "nope.png"),
               "--max-new-tokens", "8", "--device", "cpu"])
    assert rc != 0 and "does not exist" in capsys.readouterr().err


def test_text_loads_never_import_the_vision_modules(placeholder):
    """The vision tower's and image processor's modules stay unimported (transformers' tokenizer
    loader itself imports PIL and the Gemma 4 *configuration*, reading config.json)."""
    code = ("import sys, dgemma_helpers as dg; dg.generate(dg.load_model(sys.argv[1], device='cpu'), 'Hi', "
            "max_new_tokens=8, max_denoising_steps=2); print(sorted(m for m in sys.modules if m.startswith("
            "('transformers.models.gemma4.modeling', 'transformers.models.gemma4.image_processing', "
            "'transformers.models.diffusion_gemma.modeling'))))")
    out = subprocess.run([sys.executable, "-c", code, str(placeholder)], check=False, capture_output=True,
                         text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(Path(dg.__file__).parents[1])})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_causal_image_reading_where_the_config_says_so(tmp_path):
    """use_bidirectional_attention null (transformers' default): images are read causally, by both."""
    causal = make_random_checkpoint(tmp_path / "causal", embed_std=1.0, vision_config=VISION,
                                    use_bidirectional_attention=None)
    model, ref = dg.load_model(causal, device="cpu"), DiffusionGemmaForBlockDiffusion.from_pretrained(causal).eval()
    assert not model.config.bidirectional_vision
    chats = [chat(1)]
    ids, _, _, images = prompt_inputs(model, None, chats, None, None, 0)
    features = torch.cat(images.features)
    # transformers' encoder over the same image features (their parity is test_encoder_logits_...): with
    # the flag null, generate() builds plain causal masks, as a direct call does.
    with torch.no_grad():
        inputs_embeds = ref.model.encoder.get_input_embeddings()(ids)
        inputs_embeds[ids == model.config.image_token_id] = features
        cache = DynamicCache(config=ref.config.get_text_config(decoder=True))
        hidden = ref.model.encoder(inputs_embeds=inputs_embeds, cache=cache).last_hidden_state
        cap = ref.config.get_text_config().final_logit_softcapping
        expected = torch.tanh(ref.lm_head(hidden) / cap) * cap
    mine, _, _ = our_encoder_logits(model, chats)
    assert rel_err(mine, expected) < REL_TOL


def test_bad_vision_weights_and_processor_configs_are_refused(path, tmp_path):
    def copy(name: str) -> Path:
        out = tmp_path / name
        out.mkdir()
        for f in path.iterdir():
            (out / f.name).write_bytes(f.read_bytes())
        return out

    tensors = load_file(path / "model.safetensors")
    name = "model.encoder.embed_vision.embedding_projection.weight"
    missing = copy("missing")
    save_file({n: t for n, t in tensors.items() if n != name}, missing / "model.safetensors")
    with pytest.raises(dg.CheckpointError, match=f"lacks 1 vision tensor.*{name}.*vision=False"):
        dg.load_model(missing, device="cpu")
    assert dg.load_model(missing, device="cpu", vision=False).vision is None  # text still loads
    misshaped = copy("misshaped")
    save_file({**tensors, name: tensors[name][:, :-1].contiguous()}, misshaped / "model.safetensors")
    with pytest.raises(dg.CheckpointError, match=f"{name}' has shape .* but vision_config implies"):
        dg.load_model(misshaped, device="cpu")
    integer = copy("integer")
    save_file({**tensors, name: tensors[name].to(torch.int32)}, integer / "model.safetensors")
    with pytest.raises(dg.CheckpointError, match=f"{name}' in model.safetensors is stored as I32"):
        dg.load_model(integer, device="cpu")
    patches = copy("patches")
    config = json.loads((path / "processor_config.json").read_text())
    config["image_processor"]["patch_size"] = 16
    (patches / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(dg.CheckpointError, match="patch_size=16 differs from vision_config.patch_size=8"):
        dg.load_model(patches, device="cpu")
    defaults = copy("defaults")
    (defaults / "processor_config.json").unlink()
    settings = dg.load_model(defaults, device="cpu").vision.processor
    assert settings == {"patch_size": 8, "pooling_kernel_size": 2, "max_soft_tokens": 280}  # transformers' defaults


def test_text_only_callers_refuse_images(model):
    """prompt_batch (introspection, the benchmark engines) takes text only, before reading any image."""
    with pytest.raises(dg.InputError, match="text prompts only.*dg.generate"):
        prompt_batch(model, None, _image_chat("/no/such/file.png"), None, None, 0)


def test_a_template_that_drops_images_is_refused(model):
    template = model.tokenizer.chat_template
    model.tokenizer.chat_template = "{% for m in messages %}{{ m['role'] }}{% endfor %}"
    try:
        with pytest.raises(dg.InputError, match="holds 1 image.*wrote 0 image placeholder"):
            dg.generate(model, messages=chat(1), max_new_tokens=8)
    finally:
        model.tokenizer.chat_template = template


def test_the_memory_command_counts_the_vision_tower(path, model, capsys):
    assert main(["memory", "--model", str(path), "--prompt-tokens", "100", "--dtype", "float32"]) == 0
    weights = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("weights"))
    expected = weights_bytes(model.config, torch.float32) + 4 * model.vision.num_parameters()
    assert f"{expected / 2**20:.1f} MiB" in weights
