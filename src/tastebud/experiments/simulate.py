"""A short simulated experiment against a running server: users ask for lists and click what they really like.

:func:`simulate` plays a set of users through ``GET /recommend/{user}`` (the server assigns each user's variant and
logs the exposure) and lets each user click every recommended item that is in their ground truth (held-out items
they really liked) with probability ``click_probability``. The clicks are posted to ``POST /events`` in batches,
stamped after the exposure. The variant that recommends more of the held-out items earns more clicks, so the analysis
of the store (:func:`tastebud.experiments.report.analyze_experiment`) should name it.

:func:`held_out_truth` builds the ground truth from the test part of the split that ``tastebud train`` uses, so the
items are ones no registered model was trained on.

Success comes from clicks only: a non-200 answer is counted under ``errors`` and is never a success or a failure of
a variant.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import numpy as np

from tastebud.errors import ExperimentError

if TYPE_CHECKING:
    from tastebud.config import Settings
    from tastebud.data.dataset import Dataset

#: The variant key of lists served outside the experiment (holdout, another experiment, no experiment).
NO_VARIANT = "(none)"


class HttpClient(Protocol):
    """The part of :class:`httpx.Client` :func:`simulate` uses."""

    def get(self, url: str, **kwargs: Any) -> Any: ...

    def post(self, url: str, **kwargs: Any) -> Any: ...


@dataclass
class SimulationResult:
    """What a simulation did.

    Attributes:
        experiment: the experiment's name.
        requests: lists served (200 answers) per variant (:data:`NO_VARIANT` for lists outside the experiment).
        clicks: clicks posted per variant.
        errors: non-200 answers (recommendation requests and event batches), counted apart from every variant.
        accepted: events the server stored (``accepted`` of ``POST /events``).
        duplicates: events the server already had.
        rejected: events the server refused.
    """

    experiment: str
    requests: dict[str, int] = field(default_factory=dict)
    clicks: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "experiment": self.experiment, "requests": dict(self.requests), "clicks": dict(self.clicks),
            "errors": self.errors, "accepted": self.accepted, "duplicates": self.duplicates,
            "rejected": self.rejected,
        }  # fmt: skip


def simulate(
    base_url: str,
    experiment_name: str,
    users: Iterable[str],
    ground_truth: Mapping[str, set[str]],
    *,
    k: int = 10,
    seed: int = 0,
    timestamp: int | None = None,
    http: HttpClient | None = None,
    click_probability: float = 0.8,
    batch_size: int = 500,
) -> SimulationResult:
    """Run a short simulated experiment against the server at ``base_url``.

    Args:
        base_url: the server (``http://127.0.0.1:8000``).
        experiment_name: the running experiment; lists served under another one (or none) count as
            :data:`NO_VARIANT` and their clicks are still posted.
        users: the simulated users, in order.
        ground_truth: user -> the item ids they really like (held out from every model); others never click.
        k: list length asked for.
        seed: seed of the click draws.
        timestamp: the events' time (epoch seconds; default ``int(time.time()) + 1`` after each user's request, so
            each click follows its exposure).
        http: the client (default a fresh :class:`httpx.Client`).
        click_probability: chance that a user clicks a recommended item of their ground truth.
        batch_size: events per ``POST /events``.

    Raises:
        ExperimentError: the server cannot be reached (one line naming the URL), or bad arguments.
    """
    if not 0 <= click_probability <= 1:
        raise ExperimentError(f"click_probability must be in [0, 1], got {click_probability}")
    if k < 1 or batch_size < 1:
        raise ExperimentError(f"k and batch_size must be at least 1, got k={k}, batch_size={batch_size}")
    base = base_url.rstrip("/")
    rng = np.random.default_rng(seed)
    run = uuid.uuid4().hex[:8]  # a rerun's clicks are new events, not duplicates of an earlier run's
    result = SimulationResult(experiment_name)
    client: Any = http
    own = client is None
    if own:
        import httpx

        from tastebud.serving.auth import client_headers

        # with API keys on, the server needs a key with read and write-events scopes: TASTEBUD_API_KEY
        client = httpx.Client(timeout=30, headers=client_headers())
    try:
        events: list[dict[str, Any]] = []
        for user in users:
            body = _call(client.get, f"{base}/recommend/{quote(str(user), safe='')}", base, params={"k": k})
            if body is None:
                result.errors += 1
                continue
            variant = body.get("variant") if body.get("experiment") == experiment_name else None
            key = variant or NO_VARIANT
            result.requests[key] = result.requests.get(key, 0) + 1
            liked = ground_truth.get(str(user), set())
            at = int(time.time()) + 1 if timestamp is None else int(timestamp)
            for rec in body.get("recommendations") or []:
                item = str(rec["item_id"])
                if item in liked and rng.random() < click_probability:
                    events.append({"event_id": f"sim-{run}-{user}-{item}", "user_id": str(user), "item_id": item,
                                   "kind": "click", "timestamp": at})  # fmt: skip
                    result.clicks[key] = result.clicks.get(key, 0) + 1
            if len(events) >= batch_size:
                _post(client, base, events, result)
                events = []
        if events:
            _post(client, base, events, result)
    finally:
        if own:
            client.close()
    return result


def _call(method: Any, url: str, base: str, **kwargs: Any) -> dict[str, Any] | None:
    """The JSON body of a 200 answer; None for any other status; ExperimentError when the server is unreachable."""
    import httpx

    try:
        response = method(url, **kwargs)
    except httpx.TransportError as err:
        raise ExperimentError(f"cannot reach the server at {base}: {type(err).__name__}: {err}") from None
    if response.status_code != 200:
        return None
    body = response.json()
    return body if isinstance(body, dict) else None


def _post(client: Any, base: str, events: list[dict[str, Any]], result: SimulationResult) -> None:
    body = _call(client.post, f"{base}/events", base, json=events)
    if body is None:
        result.errors += 1
        return
    result.accepted += int(body.get("accepted", 0))
    result.duplicates += int(body.get("duplicates", 0))
    result.rejected += len(body.get("rejected") or [])


def ground_truth_from(test: Dataset, *, min_rating: float = 4.0) -> dict[str, set[str]]:
    """User -> items of ``test`` they liked: rated at least ``min_rating``, or every item when there are no ratings."""
    frame = test.interactions
    users = np.asarray(test.users.ids)[frame["user_idx"].to_numpy()]
    items = np.asarray(test.items.ids)[frame["item_idx"].to_numpy()]
    keep = np.ones(len(frame), dtype=bool)
    if "rating" in frame.columns and frame["rating"].null_count() < len(frame):
        keep = (frame["rating"].fill_null(0.0) >= min_rating).to_numpy()
    truth: dict[str, set[str]] = {}
    for user, item in zip(users[keep].tolist(), items[keep].tolist(), strict=True):
        truth.setdefault(str(user), set()).add(str(item))
    return truth


def held_out_truth(dataset: str, settings: Settings, *, min_rating: float = 4.0) -> dict[str, set[str]]:
    """Ground truth from the test part of the split ``tastebud train`` makes of ``dataset`` (prepared the same way).

    The training pipeline reads the dataset, prepares it with :data:`tastebud.pipeline.train.DEFAULT_PREPARE` and
    splits it per user (random, 20% test, 10% validation, ``settings.seed``); the models learn from the train part
    only, so the test part's items are held out from every registered model trained with the same seed.
    """
    from tastebud.data.prepare import PrepareConfig, prepare
    from tastebud.data.readers import read_dataset
    from tastebud.data.split import make_split
    from tastebud.pipeline.train import DEFAULT_PREPARE, split_spec

    ds = prepare(read_dataset(dataset, settings=settings), PrepareConfig.from_params(**DEFAULT_PREPARE))
    sp = split_spec(settings.seed)
    split = make_split(ds, sp["method"], **sp["params"], seed=sp["seed"])
    return ground_truth_from(split.test, min_rating=min_rating)
