"""Pipelines: plain functions, one step each (train and register; promote with a gate; roll back)."""

from tastebud.pipeline.promote import PromotionResult, promote, rollback
from tastebud.pipeline.train import TrainResult, default_model_name, reproduce, train

__all__ = ["PromotionResult", "TrainResult", "default_model_name", "promote", "reproduce", "rollback", "train"]
