"""Recommendation models behind one interface; :func:`create` builds one by its ``--model`` name."""

from __future__ import annotations

from importlib import import_module
from typing import Any

from tastebud.errors import ParameterError
from tastebud.models.base import ModelConfig, Recommendations, Recommender

#: ``--model`` name -> "module:Class" (imported on first use, so heavy libraries load only when needed).
MODELS: dict[str, str] = {
    "popular": "tastebud.models.popularity:PopularityRecommender",
    "itemknn": "tastebud.models.item_knn:ItemKNNRecommender",
    "userknn": "tastebud.models.user_knn:UserKNNRecommender",
    "als": "tastebud.models.als:ALSRecommender",
    "bpr": "tastebud.models.bpr:BPRRecommender",
    "ease": "tastebud.models.ease:EASERecommender",
    "seqtrans": "tastebud.models.sequential:SeqTransRecommender",
    "rp3beta": "tastebud.models.rp3beta:RP3betaRecommender",
    "slim": "tastebud.models.slim:SLIMRecommender",
    "multvae": "tastebud.models.vae:MultVAERecommender",
    "svd": "tastebud.models.svd:SVDRecommender",
    "content": "tastebud.models.content:ContentRecommender",
    "hybrid": "tastebud.models.hybrid:HybridRecommender",
    "ensemble": "tastebud.models.ensemble:EnsembleRecommender",
}


def model_class(name: str) -> type[Recommender]:
    """The class registered under ``name``."""
    try:
        target = MODELS[name]
    except KeyError:
        raise ParameterError(f"unknown model {name!r}; choose one of: {', '.join(MODELS)}") from None
    module, _, cls = target.partition(":")
    return getattr(import_module(module), cls)  # type: ignore[no-any-return]


def create(name: str, **params: Any) -> Recommender:
    """Build an unfitted model by name; ``params`` are validated through the model's config class."""
    return model_class(name)(**params)


__all__ = ["MODELS", "ModelConfig", "Recommendations", "Recommender", "create", "model_class"]
