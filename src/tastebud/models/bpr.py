"""Bayesian Personalized Ranking (Rendle et al., UAI 2009) on top of ``implicit``'s CPU implementation.

implicit keeps an item bias as one extra factor column (users carry a constant 1 there), so the stored factors
are ``factors + 1`` wide and a plain inner product gives the full score. BPR treats every observed cell as a
positive, whatever its value. With ``num_threads`` above 1 the SGD updates race (Hogwild), so only
``num_threads=1`` is bit-for-bit reproducible for a seed.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from pydantic import Field

from tastebud.models._factors import FactorConfig, FactorRecommender


class BPRConfig(FactorConfig):
    """Hyperparameters of :class:`BPRRecommender`."""

    iterations: int = Field(100, ge=1)
    """Training epochs (default 100)."""
    learning_rate: float = Field(0.01, gt=0.0)
    """SGD step size."""
    verify_negative_samples: bool = True
    """Resample a negative item the user actually saw (slower, usually better)."""


class BPRRecommender(FactorRecommender):
    """Pairwise-ranking matrix factorisation."""

    name = "bpr"
    config_class = BPRConfig
    config: BPRConfig
    extra_dims = 1

    def _train(self, matrix: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
        from implicit.cpu.bpr import BayesianPersonalizedRanking

        cfg = self.config
        model = BayesianPersonalizedRanking(
            factors=cfg.factors,
            learning_rate=cfg.learning_rate,
            regularization=cfg.regularization,
            iterations=cfg.iterations,
            num_threads=cfg.num_threads,
            verify_negative_samples=cfg.verify_negative_samples,
            random_state=cfg.random_state,
        )
        model.fit(matrix, show_progress=cfg.show_progress)
        return model.user_factors, model.item_factors
