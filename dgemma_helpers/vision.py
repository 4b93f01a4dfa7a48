"""Image prompts: transformers' own Gemma 4 vision tower, and the kit's glue around it.

The vision transformer is not rewritten here: `load_vision` builds transformers' modules from the
checkpoint's `vision_config` exactly as `DiffusionGemmaEncoderModel.__init__` does
(`AutoModel.from_config(vision_config)` + `DiffusionGemmaMultimodalEmbedder`) and copies the
checkpoint's `model.encoder.vision_tower.*` / `model.encoder.embed_vision.*` tensors into them. The
kit's part is what transformers' Gemma4Processor and DiffusionGemmaEncoderModel do around them:

  expand   each image placeholder the chat template writes becomes boi, N image tokens, eoi
           (N = the image processor's soft-token count for that image), as Gemma4Processor does;
  scatter  the tower's features replace the embeddings at the image-token positions
           (DiffusionGemmaEncoderModel.forward's masked_scatter);
  blocks   each run of image tokens is one block, bidirectional inside (get_block_sequence_ids_for_mask),
           which KVCache.begin_encode turns into the encoder's attention masks.

transformers and PIL are imported lazily: the package, and a text-only load, never import them.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from .config import TINY_VISION_CONFIG, ModelConfig, read_json
from .errors import CheckpointError, InputError
from .hub import OFFICIAL_REPO
from .shards import load_tensors
from .validate import check

VISION_PREFIXES = ("model.encoder.vision_tower.", "model.encoder.embed_vision.")
NO_VISION_FIX = (f"use a checkpoint with a trained vision tower, such as the official {OFFICIAL_REPO}, or load it "
                 "without vision=False")
# transformers sets no limit on images per prompt (only the context does). The kit runs the tower
# one image at a time, so its activations stay one image's; it still refuses more than this many per
# chat (each image costs its soft tokens, 282 at the official settings, and a tower pass): enough
# for any multi-image question, and a plain bound to state.
MAX_IMAGES = 16
# Gemma4ImageProcessorPil's settings that a checkpoint's processor config may set.
PROCESSOR_KEYS = ("do_resize", "resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean",
                  "image_std", "do_convert_rgb", "patch_size", "max_soft_tokens", "pooling_kernel_size")
# What the official Gemma 4 checkpoints ship in processor_config.json ("image_processor"), equal to
# transformers' Gemma4ImageProcessorPil defaults; used when a checkpoint ships no processor config.
DEFAULT_MAX_SOFT_TOKENS = 280
# The official checkpoint's vision tower, as published for the Gemma 4 26B-A4B family it shares:
# 27 layers of width 1152 (16 heads of 72), patches of 16 pixels, 3x3 pooling into soft tokens. It
# lets notebooks count the tower without the checkpoint (a loaded checkpoint uses its own config).
OFFICIAL_VISION_CONFIG = {
    "model_type": "gemma4_vision", "hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 72, "global_head_dim": 72, "patch_size": 16,
    "pooling_kernel_size": 3, "position_embedding_size": 10240, "default_output_length": 280, "standardize": True,
}
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://|^data:")


def is_placeholder(vision_config: dict[str, Any]) -> bool:
    """The kit's own minimal tower (TINY_VISION_CONFIG), written only so that transformers loads
    the file: transformers serialises every default, so the placeholder is recognised by the
    fields that define it."""
    return all(vision_config.get(k) == v for k, v in TINY_VISION_CONFIG.items())


@dataclass
class VisionTower:
    """transformers' vision tower and embedder, with the image processor's settings."""

    tower: Any  # transformers' Gemma4VisionModel
    embed: Any  # DiffusionGemmaMultimodalEmbedder
    processor: dict[str, Any] = field(default_factory=dict)

    def preprocess(self, images: list) -> dict[str, Any]:
        """pixel_values, image_position_ids, num_soft_tokens_per_image (Gemma4ImageProcessorPil)."""
        from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

        return Gemma4ImageProcessorPil(**self.processor)(images, return_tensors="pt")

    @torch.no_grad()
    def features(self, pixel_values: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """[soft tokens of all images, text hidden]: DiffusionGemmaEncoderModel.get_image_features."""
        p = next(self.tower.parameters())
        out = self.tower(pixel_values=pixel_values.to(p.device, p.dtype),
                         pixel_position_ids=position_ids.to(p.device)).last_hidden_state
        return self.embed(out)

    def num_parameters(self) -> int:
        return sum(t.numel() for t in _named(self.tower, self.embed).values())

    def checkpoint_tensors(self) -> dict[str, torch.Tensor]:
        """The tower's and the embedder's weights under their checkpoint names (what load_vision reads)."""
        return {name: t.detach().to("cpu").contiguous() for name, t in _named(self.tower, self.embed).items()}


def _build(vision_config: dict[str, Any], text_hidden: int) -> tuple[Any, Any]:
    """transformers' tower and embedder for a vision_config, as DiffusionGemmaEncoderModel.__init__ builds them."""
    from transformers import AutoConfig, AutoModel
    from transformers.models.diffusion_gemma.modeling_diffusion_gemma import DiffusionGemmaMultimodalEmbedder

    vc = dict(vision_config)
    try:
        config = AutoConfig.for_model(**vc)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"config.json's vision_config is not a valid {vc.get('model_type')!r} config ({e}): "
                              "re-download the checkpoint's config.json.") from e
    tower = AutoModel.from_config(config)
    return tower, DiffusionGemmaMultimodalEmbedder(config, SimpleNamespace(hidden_size=text_hidden))


def _named(tower, embed) -> dict[str, torch.Tensor]:
    """The tower's and the embedder's tensors under their checkpoint names."""
    return {prefix + n: t for prefix, m in zip(VISION_PREFIXES, (tower, embed)) for n, t in m.state_dict().items()}


def placeholder_tensors(text_hidden: int) -> dict[str, torch.Tensor]:
    """The kit's minimal untrained tower (TINY_VISION_CONFIG) under its checkpoint names, so that
    transformers loads a saved checkpoint without missing weights: matrices normal(0, 0.02) from a
    fixed seed, the rest as transformers initialises them."""
    tensors, g = _named(*_build(TINY_VISION_CONFIG, text_hidden)), torch.Generator().manual_seed(0)
    return {name: torch.randn(t.shape, generator=g) * 0.02 if t.is_floating_point() and t.ndim >= 2
            else t.detach().clone().contiguous() for name, t in tensors.items()}


def expected_vision_tensors(vision_config: dict[str, Any], text_hidden: int) -> dict[str, tuple[int, ...]]:
    """Checkpoint name -> shape of every vision tensor, from weightless (meta) transformers modules."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in _named(*_build(vision_config, text_hidden)).items()}


def vision_parameters(vision_config: dict[str, Any], text_hidden: int) -> int:
    """Parameters of a vision tower and its embedder, counted on weightless modules."""
    return sum(math.prod(shape) for shape in expected_vision_tensors(vision_config, text_hidden).values())


def check_vision_tensors(path: Path, entries: dict[str, Any], vision_config: dict[str, Any],
                         text_hidden: int) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the checkpoint's vision tensors against its vision_config (headers only)."""
    expected = expected_vision_tensors(vision_config, text_hidden)
    unknown = sorted(n for n in entries if n not in expected)
    check(not unknown, CheckpointError, f"checkpoint {path} has {len(unknown)} vision tensor(s) that its vision_config "
          f"does not have, e.g. {unknown[:3]}: the weights and config.json do not match; use the config.json that came "
          "with these weights, or load with vision=False.")
    missing = sorted(n for n in expected if n not in entries)
    check(not missing, CheckpointError, f"checkpoint {path} lacks {len(missing)} vision tensor(s), e.g. {missing[:3]}: "
          "the download is incomplete; re-download it, or load with vision=False.")
    for name, entry in entries.items():
        check(tuple(entry.shape) == expected[name], CheckpointError, f"vision tensor {name!r} has shape "
              f"{list(entry.shape)} but vision_config implies {list(expected[name])}: the weights and config.json do "
              "not match.")
    return expected


def processor_settings(path: Path, vision_config: dict[str, Any]) -> dict[str, Any]:
    """The image processor's settings: the checkpoint's processor_config.json ("image_processor", as
    the official Gemma 4 checkpoints ship it) or preprocessor_config.json, else transformers'
    defaults with the patch and pooling sizes of vision_config."""
    settings: dict[str, Any] = {}
    for name, key in (("processor_config.json", "image_processor"), ("preprocessor_config.json", None)):
        if (path / name).exists():
            data = read_json(path / name, "processor config")
            data = data.get(key, {}) if key else data
            check(isinstance(data, dict), CheckpointError, f"{path / name}: {key} must be an object of image processor "
                  "settings.")
            settings = {k: v for k, v in data.items() if k in PROCESSOR_KEYS}
            break
    for k in ("patch_size", "pooling_kernel_size"):
        want = vision_config.get(k, 16 if k == "patch_size" else 3)
        check(settings.setdefault(k, want) == want, CheckpointError, f"{path}: the processor config's "
              f"{k}={settings[k]!r} differs from vision_config.{k}={want!r}; the tower would read wrongly cut patches. "
              "Correct it in the processor config, or delete that file to use vision_config's.")
    settings.setdefault("max_soft_tokens", DEFAULT_MAX_SOFT_TOKENS)
    return settings


def load_vision(path: Path, raw_config: dict[str, Any], entries: dict[str, Any], config: ModelConfig,
                device: torch.device, dtype: torch.dtype) -> VisionTower:
    """transformers' tower and embedder, built from vision_config on `device`, with the checkpoint's
    weights (names and shapes already checked by check_vision_tensors)."""
    vision_config = raw_config["vision_config"]
    with torch.device("meta"):
        built = _build(vision_config, config.hidden_size)
    tower, embed = (m.to(dtype).to_empty(device=device) for m in built)
    load_tensors(entries, _named(tower, embed))
    # Non-persistent buffers (the rotary tables) are not in the checkpoint and were left empty by the
    # meta build: take them from a freshly built copy of their module, in its own dtype (float32), as
    # from_pretrained leaves them.
    for module in tower.modules():
        persistent = set(module.state_dict(keep_vars=True)) if module._buffers else set()
        stale = [n for n, b in module._buffers.items() if b is not None and n not in persistent]
        if stale:
            fresh = type(module)(module.config)
            for n in stale:
                setattr(module, n, getattr(fresh, n).to(device))
    tower.eval().requires_grad_(False)
    embed.eval().requires_grad_(False)
    return VisionTower(tower, embed, processor_settings(path, vision_config))


# ---- images in a chat ---------------------------------------------------------------------------
def load_image(value: Any, where: str):
    """A PIL image from a PIL image or a local file path; anything else is an InputError by name."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value
    if isinstance(value, (str, os.PathLike)):
        text = str(value)
        check(not _URL.match(text), InputError, f"{where} is the URL {text[:80]!r}: the kit never downloads (no "
              "network at run time). Download the image first and give its local file path, or a PIL image.")
        file = Path(text).expanduser()
        check(file.is_file(), InputError, f"{where}: image file {text!r} does not exist (or is not a file): give the "
              "path of a local image file (PNG, JPEG, ...), or a PIL image.")
        try:
            with Image.open(file) as im:
                im.load()
                return im.copy()
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise InputError(f"{where}: {text!r} could not be read as an image ({type(e).__name__}: {e}): give a "
                             "readable image file (PNG, JPEG, ...), or a PIL image.") from e
    raise InputError(f"{where} is a {type(value).__name__}; give a PIL image or a local image file path "
                     "(str or pathlib.Path).")


def require_vision(model) -> VisionTower:
    """The model's tower, or an InputError that says why there is none and the fix."""
    if getattr(model, "vision", None) is not None:
        return model.vision
    why = getattr(model, "vision_note", None) or "this checkpoint has no vision tower"
    fix = ("load it again without vision=False" if "vision=False" in why else
           f"use a checkpoint with a trained vision tower, such as the official {OFFICIAL_REPO}")
    raise InputError(f"an image was given, but {why}: {fix}.")


@dataclass
class ImageBatch:
    """The images of a left-padded batch of prompts, ready for the encoder."""

    features: list[torch.Tensor]  # per row: [that row's image tokens, hidden]


def expand_images(model, rows: list[list[int]], images: list[list]) -> tuple[list[list[int]], ImageBatch]:
    """Replace each image placeholder in each row by boi, N image tokens, eoi (Gemma4Processor's
    replace_image_token, done on token ids: the three are special tokens, so tokenising the
    expanded text gives the same ids), and compute every image's features."""
    vision = require_vision(model)
    c = model.config
    for tok, name in ((c.image_token_id, "image_token_id"), (c.boi_token_id, "boi_token_id"),
                      (c.eoi_token_id, "eoi_token_id")):
        check(0 <= tok < c.vocab_size, InputError, f"config.json's {name}={tok} is outside the vocabulary "
              f"0..{c.vocab_size - 1}: the checkpoint cannot take images; {NO_VISION_FIX}.")
    out_rows, features = [], []
    for r, (row, imgs) in enumerate(zip(rows, images)):
        n_marks = sum(1 for t in row if t == c.image_token_id)
        check(n_marks == len(imgs), InputError, f"chat {r} holds {len(imgs)} image(s) but its chat template wrote "
              f"{n_marks} image placeholder(s): the checkpoint's chat template must render each {{'type': 'image'}} "
              "part as the image token (Gemma's template does); use the checkpoint's own template.")
        if not imgs:
            out_rows.append(list(row))
            features.append(torch.zeros(0, c.hidden_size, device=model.device, dtype=model.dtype))
            continue
        try:
            data = vision.preprocess(imgs)
        except (ValueError, TypeError, OSError) as e:  # e.g. an image too thin to cut into one patch row
            raise InputError(f"an image of chat {r} could not be preprocessed ({type(e).__name__}: {e}): give an "
                             "ordinary RGB or greyscale picture of a reasonable aspect ratio.") from e
        counts = [int(n) for n in data["num_soft_tokens_per_image"]]
        expanded, k = [], 0
        for t in row:
            if t == c.image_token_id:
                expanded += [c.boi_token_id] + [c.image_token_id] * counts[k] + [c.eoi_token_id]
                k += 1
            else:
                expanded.append(t)
        # One image at a time: the tower's activations (and its attention over up to 2520 patches)
        # are then one image's, whatever the number of images in the chat.
        pixels, positions = data["pixel_values"], data["image_position_ids"]
        feats = torch.cat([vision.features(pixels[i:i + 1], positions[i:i + 1]) for i in range(len(imgs))])
        check(feats.shape[0] == sum(counts), InputError, f"the vision tower gave {feats.shape[0]} soft tokens for "
              f"chat {r} but the image processor counted {sum(counts)}: its settings do not fit this vision_config.")
        out_rows.append(expanded)
        features.append(feats.to(model.device, model.dtype))
    return out_rows, ImageBatch(features)


def prompt_embeddings(model, ids: torch.Tensor, valid: torch.Tensor,
                      batch: ImageBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Input embeddings [B, P, hidden] with the image features scattered in, and the image-block ids
    [B, P] (-1 for text and pads), as DiffusionGemmaEncoderModel.forward and
    get_block_sequence_ids_for_mask make them."""
    is_image = (ids == model.config.image_token_id) & valid
    embeds = model.embed(ids)
    embeds[is_image] = torch.cat(batch.features).to(embeds.dtype)  # row-major, as masked_scatter fills
    starts = is_image & ~torch.nn.functional.pad(is_image[:, :-1], (1, 0), value=False)
    blocks = torch.where(is_image, torch.cumsum(starts.long(), dim=1) - 1, -1)
    return embeds, blocks
