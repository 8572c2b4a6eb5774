"""Content-based recommendation: TF-IDF item vectors from metadata and weighted user profiles.

Each item becomes a "document" of tokens from its metadata: ``genre_<name>``, ``tag_<name>``, ``word_<w>``
for title words (English stop words and numbers dropped) and ``decade_<1990s>`` from the year. TF-IDF
(scikit-learn's ``TfidfVectorizer``) weighs the tokens, each field is scaled by its configured weight and
every item vector is L2-normalised. A user's profile is the weighted mean of the vectors of the items they
interacted with (weights: rating minus the user's mean rating, or the interaction value), L2-normalised, and
an item's score is the cosine between the profile and its vector (Lops, de Gemmis & Semeraro,
"Content-based recommender systems: state of the art and trends", 2011; Pazzani & Billsus, "Content-based
recommendation systems", 2007).

Items listed in the metadata but without interactions are part of the vocabulary, so the model recommends them
and finds them in ``similar_items``: it needs no interaction to place an item.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Self

import numpy as np
import polars as pl
import scipy.sparse as sp
from pydantic import Field

from tastebud.data.dataset import Dataset
from tastebud.errors import BundleError, DataValidationError, NotFittedError
from tastebud.models import _scoring as sc
from tastebud.models._history import explain_weighted
from tastebud.models.base import (
    ModelConfig,
    Recommendations,
    Recommender,
    read_json,
    write_json,
)

logger = logging.getLogger(__name__)

#: Field name -> token prefix in item documents.
_PREFIX = {"genres": "genre_", "tags": "tag_", "title": "word_", "decade": "decade_"}


class ContentConfig(ModelConfig):
    """Hyperparameters of :class:`ContentRecommender`."""

    genre_weight: float = Field(1.0, ge=0.0)
    """Scale of genre tokens in item vectors (0 leaves genres out)."""
    tag_weight: float = Field(1.0, ge=0.0)
    """Scale of tag tokens (0 leaves tags out)."""
    title_weight: float = Field(0.5, ge=0.0)
    """Scale of title-word tokens (0 leaves titles out)."""
    decade_weight: float = Field(0.5, ge=0.0)
    """Scale of the decade token built from the year (0 leaves it out)."""
    min_df: int = Field(1, ge=1)
    """Tokens found in fewer items than this are dropped."""
    max_features: int | None = Field(None, ge=1)
    """Keep only the most frequent tokens (``None``: all)."""
    sublinear_tf: bool = True
    """Use ``1 + log(tf)`` term frequencies."""
    weighting: Literal["auto", "rating", "value", "binary"] = "auto"
    """Profile weights: ``rating`` = rating minus the user's mean rating (users whose ratings are all equal
    get equal weights), ``value`` = interaction value, ``binary`` = 1; ``auto`` = ``rating`` when every
    interaction has a rating, else ``value``."""
    n_explain: int = Field(3, ge=0)
    """How many of the user's items explain each recommendation (``recommend(explain=True)``)."""


class ContentRecommender(Recommender):
    """TF-IDF content model: cosine between a user's weighted profile and item vectors.

    Learned state: ``item_vectors_`` (items x tokens CSR, rows L2-normalised or empty), ``vocabulary_``
    (token per column), ``idf_``, ``weights_`` (users x items CSR of profile weights; its pattern is what each
    user interacted with, ``seen_``). A user's profile (``weights_`` row times ``item_vectors_``, L2-normalised) is
    built when the user is scored, not at fit: profiles of every user are as large as the interactions
    themselves and cost more to build than the rest of the fit, while serving scores a few users at a time.
    ``user_profiles_`` holds them only for a model loaded from a bundle that stored them.
    """

    name = "content"
    config_class = ContentConfig
    config: ContentConfig

    def __init__(self, config: ContentConfig | None = None, **params: object) -> None:
        super().__init__(config, **params)
        self.item_vectors_: sp.csr_matrix | None = None
        self.vocabulary_: list[str] = []
        self.idf_: np.ndarray | None = None
        self.user_profiles_: sp.csr_matrix | None = None
        self.weights_: sp.csr_matrix | None = None

    # ------------------------------------------------------------------ fit
    def fit(self, dataset: Dataset) -> Self:
        """Vectorise ``dataset.item_meta`` and build every user's profile.

        Raises:
            DataValidationError: no item has any metadata token for the enabled fields.
        """
        vectors, vocabulary, idf = item_vectors(dataset.item_meta, self.config)
        weights = _profile_weights(dataset, self.config.weighting)
        self.item_vectors_, self.vocabulary_, self.idf_ = vectors, vocabulary, idf
        self.user_profiles_, self.weights_ = None, weights
        self.seen_ = _pattern(weights)
        self.users_, self.items_ = dataset.users, dataset.items
        empty = int((np.diff(vectors.indptr) == 0).sum())
        logger.info(
            "content fitted",
            extra={"tokens": len(vocabulary), "items": vectors.shape[0], "items_without_tokens": empty},
        )
        return self

    # ------------------------------------------------------------------ scoring
    def recommend(
        self,
        user_ids: Sequence[str],
        k: int = 10,
        *,
        exclude_seen: bool = True,
        candidates: Sequence[str] | None = None,
        explain: bool = False,
    ) -> Recommendations:
        """Top-``k`` items by cosine to the user's profile; cold items (no interactions) included.

        With ``explain=True``, each item is explained by the user's positively weighted items most similar
        to it.
        """
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.weights_ is not None
        k = sc.check_k(k)
        rows = self.users_.index(user_ids, kind="user")
        cands = sc.resolve_candidates(self.items_, candidates)
        idx, scores = sc.rank(
            self._score,
            rows,
            k,
            n_items=len(self.items_),
            exclude=self.seen_[rows] if exclude_seen else None,
            candidates=cands,
        )
        explanations = None
        if explain:
            vectors = self.item_vectors_
            assert vectors is not None
            # Item j adds weight_uj * cos(j, i) to the (unnormalised) profile score of item i.
            explanations = sc.explain_linear(
                self.weights_,
                rows,
                idx,
                self.items_,
                lambda h, r: (vectors[h] @ vectors[r].T).toarray(),
                self.config.n_explain,
            )
        return sc.build_recommendations(list(user_ids), idx, scores, self.items_, explanations)

    history_scoring = True

    def user_history(self, user_id: str) -> tuple[list[str], np.ndarray]:
        """A known user's items and their profile weights (what ``recommend_history`` takes as values)."""
        self.check_fitted()
        assert self.users_ is not None and self.items_ is not None and self.weights_ is not None
        u = int(self.users_.index([user_id], kind="user")[0])
        lo, hi = self.weights_.indptr[u], self.weights_.indptr[u + 1]
        ids = [str(x) for x in self.items_.ids[self.weights_.indices[lo:hi]].tolist()]
        return ids, np.asarray(self.weights_.data[lo:hi], dtype=np.float64)

    def _history_scores(self, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Cosine between every item and the profile built from the history, ``values`` as profile weights.

        ``binary`` weighting ignores the values; otherwise a value is the item's weight in the profile, as in
        ``weights_`` (a real-time event's value, e.g. its rating, counts as a positive weight).
        """
        assert self.item_vectors_ is not None
        weights = np.ones(len(idx)) if self.config.weighting == "binary" else values
        profile = _l2_rows(sp.csr_matrix(weights[None, :].astype(np.float32) @ self.item_vectors_[idx]))
        return (self.item_vectors_ @ profile.T).toarray().ravel()

    def _explain_history(self, idx: np.ndarray, values: np.ndarray, rec: np.ndarray) -> list[list[str]]:
        assert self.item_vectors_ is not None and self.items_ is not None
        block = (self.item_vectors_[idx] @ self.item_vectors_[rec].T).toarray()
        return explain_weighted(self.items_, idx, values, block, self.config.n_explain)

    def similar_items(self, item_ids: Sequence[str], k: int = 10) -> Recommendations:
        """Top-``k`` items by cosine between TF-IDF vectors (the query item excluded)."""
        self.check_fitted()
        assert self.items_ is not None and self.item_vectors_ is not None
        k = sc.check_k(k)
        rows = self.items_.index(item_ids, kind="item")
        vectors = self.item_vectors_
        idx, scores = sc.rank(
            lambda r, c: (vectors[r] @ (vectors if c is None else vectors[c]).T).toarray(),
            rows,
            k,
            n_items=len(self.items_),
            exclude=sc.query_mask(rows, len(self.items_)),
        )
        return sc.build_recommendations(list(item_ids), idx, scores, self.items_)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: Path) -> None:
        """Write the TF-IDF matrix and weights as CSR arrays and the vocabulary as JSON.

        The seen matrix is the pattern of the weights and profiles are built from the weights, so neither is
        written (``model.json`` records ``"seen": {"pattern_of": "weights"}``).
        """
        self.check_fitted()
        assert self.idf_ is not None and self.item_vectors_ is not None
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        extra = {name: sc.save_csr(directory, name, getattr(self, f"{name}_")) for name in ("item_vectors", "weights")}
        sc.save_state(
            self, directory, {"matrices": extra, "n_tokens": len(self.vocabulary_)}, seen={"pattern_of": "weights"}
        )
        np.save(directory / "idf.npy", self.idf_, allow_pickle=False)
        write_json(directory / "vocabulary.json", self.vocabulary_)

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read a model written by :meth:`save` (no re-vectorisation: the TF-IDF matrix is stored).

        A model saved with its profiles and seen matrix (bundles written before they were derived) loads them.
        """
        directory = Path(directory)
        model, meta = sc.load_state(cls, directory)
        assert model.users_ is not None and model.items_ is not None
        vocabulary = read_json(directory / "vocabulary.json")
        if not isinstance(vocabulary, list) or len(vocabulary) != meta.get("n_tokens"):
            raise BundleError(f"{directory}/vocabulary.json: expected {meta.get('n_tokens')} tokens")
        n_users, n_items, n_tokens = len(model.users_), len(model.items_), len(vocabulary)
        shapes = {"item_vectors": (n_items, n_tokens), "weights": (n_users, n_items)}
        if "user_profiles" in meta.get("matrices", {}):
            shapes["user_profiles"] = (n_users, n_tokens)
        for name, shape in shapes.items():
            setattr(model, f"{name}_", sc.load_csr(directory, name, shape))
        if model.seen_ is None:
            model.seen_ = _pattern(model.weights_)
        model.vocabulary_ = [str(t) for t in vocabulary]
        model.idf_ = sc.load_checked(directory / "idf.npy", (n_tokens,), np.floating)
        return model

    def _score(self, rows: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
        """Cosine between the profiles of ``rows`` (user indices) and the vectors of ``cols`` (or all)."""
        assert self.item_vectors_ is not None
        vectors = self.item_vectors_ if cols is None else self.item_vectors_[cols]
        return (self._profiles(rows) @ vectors.T).toarray()

    def _profiles(self, rows: np.ndarray) -> sp.csr_matrix:
        """L2-normalised profiles of the users at ``rows``: their weights times the item vectors."""
        if self.user_profiles_ is not None:
            return self.user_profiles_[rows]
        assert self.weights_ is not None and self.item_vectors_ is not None
        return _l2_rows(sp.csr_matrix(self.weights_[rows] @ self.item_vectors_))

    def check_fitted(self) -> None:
        if self.item_vectors_ is None:
            raise NotFittedError(f"{self.name} model is not fitted: call fit(dataset) first")


# ---------------------------------------------------------------------- item documents and vectors
def item_documents(item_meta: pl.DataFrame, config: ContentConfig) -> list[str]:
    """One space-separated token string per item row of ``item_meta`` (fields with weight 0 left out)."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    def tokens(column: str, prefix: str) -> pl.Expr:
        return (
            pl.col(column)
            .list.eval(pl.lit(prefix) + pl.element().str.strip_chars().str.to_lowercase().str.replace_all(r"\s+", "_"))
            .list.eval(pl.element().filter(pl.element() != pl.lit(prefix)))
        )

    parts: list[pl.Expr] = []
    if config.genre_weight > 0:
        parts.append(tokens("genres", _PREFIX["genres"]))
    if config.tag_weight > 0:
        parts.append(tokens("tags", _PREFIX["tags"]))
    if config.title_weight > 0:
        words = pl.col("title").fill_null("").str.to_lowercase().str.extract_all(r"[^\W\d_][\w']+")
        stop = pl.lit(sorted(ENGLISH_STOP_WORDS))
        parts.append(
            words.list.eval(pl.element().filter(~pl.element().is_in(stop)))
            .list.eval(pl.lit(_PREFIX["title"]) + pl.element())
            .fill_null([])
        )
    if config.decade_weight > 0:
        decade = pl.lit(_PREFIX["decade"]) + ((pl.col("year") // 10) * 10).cast(pl.String) + pl.lit("s")
        parts.append(pl.when(pl.col("year").is_not_null()).then(pl.concat_list(decade)).otherwise(pl.lit([])))
    if not parts:
        raise DataValidationError("content model: every field weight is 0, so items have no tokens")
    docs = item_meta.select(pl.concat_list(parts).list.join(" ").alias("doc"))["doc"]
    return docs.fill_null("").to_list()


def item_vectors(item_meta: pl.DataFrame, config: ContentConfig) -> tuple[sp.csr_matrix, list[str], np.ndarray]:
    """TF-IDF matrix (items x tokens, field-weighted, rows L2-normalised), its vocabulary and idf weights.

    Raises:
        DataValidationError: no item has a single token.
    """
    from sklearn.feature_extraction.text import TfidfVectorizer

    docs = item_documents(item_meta, config)
    vectorizer = TfidfVectorizer(
        tokenizer=str.split,
        token_pattern=None,
        lowercase=False,
        min_df=config.min_df,
        max_features=config.max_features,
        sublinear_tf=config.sublinear_tf,
        norm=None,
    )
    try:
        matrix = vectorizer.fit_transform(docs)
    except ValueError as err:  # sklearn: "empty vocabulary" when no document has a token
        raise DataValidationError(
            f"content model: item metadata yields no tokens ({err}); give items genres, tags, titles or years"
        ) from err
    vocabulary = [str(t) for t in vectorizer.get_feature_names_out()]
    scale = np.ones(len(vocabulary))
    weights = {
        "genres": config.genre_weight,
        "tags": config.tag_weight,
        "title": config.title_weight,
        "decade": config.decade_weight,
    }
    for field, prefix in _PREFIX.items():
        scale[[t.startswith(prefix) for t in vocabulary]] = weights[field]
    matrix = sp.csr_matrix(matrix @ sp.diags(scale), dtype=np.float32)
    return _l2_rows(matrix), vocabulary, vectorizer.idf_.astype(np.float32)


# ---------------------------------------------------------------------- profiles
def _profile_weights(dataset: Dataset, weighting: str) -> sp.csr_matrix:
    """Users x items CSR of profile weights (one entry per distinct interacted pair, zeros kept)."""
    inter = dataset.interactions
    if weighting == "auto":
        full = inter.height > 0 and inter["rating"].null_count() == 0
        weighting = "rating" if full else "value"
    if weighting == "rating" and inter["rating"].null_count():
        raise DataValidationError(
            f"dataset {dataset.name!r}: weighting='rating' needs a rating on every interaction "
            f"({inter['rating'].null_count()} missing)"
        )
    unique = _weights_of_unique_pairs(dataset, weighting)
    if unique is not None:
        return unique
    return _grouped_weights(dataset, weighting)


def _grouped_weights(dataset: Dataset, weighting: str) -> sp.csr_matrix:
    """:func:`_profile_weights` by grouping the rows per (user, item) pair: the general path (repeated pairs)."""
    inter = dataset.interactions
    column = {"rating": pl.col("rating").mean(), "value": pl.col("value").sum(), "binary": pl.lit(1.0)}
    pairs = inter.group_by("user_idx", "item_idx").agg(column[weighting].cast(pl.Float64).alias("w"))
    if weighting == "rating":
        # Centre by the user's mean so disliked items push the profile away; a user whose ratings are all
        # equal has no contrast, so every item counts the same.
        pairs = pairs.with_columns((pl.col("w") - pl.col("w").mean().over("user_idx")).alias("w"))
        flat = pl.col("w").abs().max().over("user_idx") < 1e-9
        pairs = pairs.with_columns(pl.when(flat).then(1.0).otherwise(pl.col("w")).alias("w"))
    weights = sp.csr_matrix(
        (pairs["w"].to_numpy(), (pairs["user_idx"].to_numpy(), pairs["item_idx"].to_numpy())),
        shape=dataset.shape,
        dtype=np.float32,
    )
    weights.sort_indices()
    return weights


def _weights_of_unique_pairs(dataset: Dataset, weighting: str) -> sp.csr_matrix | None:
    """:func:`_profile_weights` of a dataset without repeated (user, item) pairs, or ``None`` when it has some.

    Each pair is then one row, its weight that row's rating, value or 1: the matrix is built from the rows in
    one pass, without grouping them (the cost of the fit on tens of millions of rows). A user's mean rating is the
    sum of the user's ratings divided by their count, in float64 as the grouping does; ratings that are
    multiples of a power of two (whole or half stars) sum exactly in any order, so the weights are the same to
    the last bit.
    """
    inter = dataset.interactions
    rows = inter["user_idx"].to_numpy()
    cols = inter["item_idx"].to_numpy()
    column = "rating" if weighting == "rating" else "value"
    data = inter[column].to_numpy().astype(np.float64)
    matrix = sp.csr_matrix((data, (rows, cols)), shape=dataset.shape, dtype=np.float64)
    if matrix.nnz != len(data):  # repeated pairs were summed: group them instead
        return None
    matrix.sort_indices()
    if weighting == "binary":
        matrix.data[:] = 1.0
    elif weighting == "rating":
        counts = np.diff(matrix.indptr)
        filled = np.flatnonzero(counts)
        starts = matrix.indptr[filled]
        mean = np.add.reduceat(matrix.data, starts) / counts[filled]
        centred = matrix.data - np.repeat(mean, counts[filled])
        # a user whose ratings are all equal has no contrast: every item counts the same
        flat = np.maximum.reduceat(np.abs(centred), starts) < 1e-9
        matrix.data = np.where(np.repeat(flat, counts[filled]), 1.0, centred)
    weights = sp.csr_matrix(matrix, dtype=np.float32)
    weights.sort_indices()
    return weights


def _pattern(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Binary CSR with the same stored entries as ``matrix`` (explicit zeros included).

    It shares ``matrix``'s index arrays (neither is changed in place), so the pattern costs only its data.
    """
    data = np.ones(matrix.nnz, dtype=np.float32)
    return sp.csr_matrix((data, matrix.indices, matrix.indptr), shape=matrix.shape, copy=False)


def _l2_rows(matrix: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to unit L2 norm (all-zero rows left as they are)."""
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    inv = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0)
    out = sp.csr_matrix(sp.diags(inv.astype(np.float32)) @ matrix, dtype=np.float32)
    out.sort_indices()
    return out
