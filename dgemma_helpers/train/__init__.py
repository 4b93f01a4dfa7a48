"""Training a small DiffusionGemma: corpus, data, the diffusion objective, the training loop."""

from .objective import TrainingContext, diffusion_loss
from .trainer import TrainConfig, TrainResult, evaluate, export, tiny_model_config, train

__all__ = ["TrainConfig", "TrainResult", "TrainingContext", "diffusion_loss", "evaluate", "export",
           "tiny_model_config", "train"]
