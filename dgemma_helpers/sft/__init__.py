"""Supervised fine-tuning on chat data: LoRA through peft (or full weights), the model's own diffusion
objective over the supervised reply, a resumable loop, and merging into a full checkpoint."""

from .data import read_conversations
from .loop import FinetuneConfig, evaluate, finetune, load_finetuned, merge_checkpoint
from .lora import load_adapter, lora_config, merge, save_adapter

__all__ = ["FinetuneConfig", "evaluate", "finetune", "load_adapter", "load_finetuned", "lora_config", "merge",
           "merge_checkpoint", "read_conversations", "save_adapter"]
