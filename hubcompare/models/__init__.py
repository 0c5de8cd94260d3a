"""What a model is and how it sits on disk: the CIFAR ResNet family (registered with timm on import),
the checkpoint folder, its model card, its per-example predictions and how it sees its input."""

from __future__ import annotations

from .resnet import ARCHITECTURE, BN_EPS, BN_MOMENTUM, INITS, CifarResNet, Tap, check_architecture, cifar_resnet, stage_channels
from .metadata import SUMMARY_KEYS, ModelMeta
from .predictions import PREDICTIONS_FILE, Predictions, predict
from .inputs import DEFAULT_IMAGE_SIZE, InputSpec, model_input_shape
from .card import build_card, card_tags, format_number
from .checkpoint import CARD_FILE, CONFIG_FILE, WEIGHTS_FILE, Checkpoint, load_checkpoint, write_checkpoint

__all__ = ["ARCHITECTURE", "BN_EPS", "BN_MOMENTUM", "INITS", "CifarResNet", "Tap", "check_architecture", "cifar_resnet", "stage_channels", "SUMMARY_KEYS", "ModelMeta", "PREDICTIONS_FILE", "Predictions", "predict", "DEFAULT_IMAGE_SIZE", "InputSpec", "model_input_shape", "build_card", "card_tags", "format_number", "CARD_FILE", "CONFIG_FILE", "WEIGHTS_FILE", "Checkpoint", "load_checkpoint", "write_checkpoint"]
