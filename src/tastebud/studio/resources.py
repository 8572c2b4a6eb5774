"""What every studio page shares: cached clients (API, registry, store, bundles), banners and catalogue look-ups.

Long-lived objects are cached with ``st.cache_resource`` keyed by what identifies them (the API URL, the home), so
one studio process serves any number of sessions with one registry client and one store engine. API answers that
change slowly (item metadata, the catalogue) are cached with ``st.cache_data`` for a short while.
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import streamlit as st

from tastebud.config import Settings, build_settings
from tastebud.errors import TastebudError
from tastebud.studio.client import ApiClient, ApiError
from tastebud.studio.launch import API_ENV, API_KEY_ENV, DEFAULT_API

if TYPE_CHECKING:
    from tastebud.registry import Bundle, ModelRegistry, ModelVersion
    from tastebud.store import Store

logger = logging.getLogger(__name__)
T = TypeVar("T")

#: Longest list the studio asks the API for (the server's ``max_k`` default).
LONG_K = 100
#: Words for what the catalogue holds, by the data's kind.
KIND_WORDS = {"movies": ("movie", "movies"), "music": ("artist", "artists")}


# ---------------------------------------------------------------------------------------------------- resources
def api_url() -> str:
    return (os.environ.get(API_ENV) or DEFAULT_API).rstrip("/")


@st.cache_resource(show_spinner=False)
def _client(url: str, key: str | None) -> ApiClient:
    return ApiClient(url, key)


def client() -> ApiClient:
    """The API client of ``TASTEBUD_STUDIO_API`` with ``TASTEBUD_API_KEY`` (one per URL and key)."""
    return _client(api_url(), os.environ.get(API_KEY_ENV) or None)


def settings() -> Settings:
    """Tastebud settings from the environment (``TASTEBUD_HOME`` ...), as the CLI builds them."""
    return _settings(tuple(sorted((k, v) for k, v in os.environ.items() if k.startswith("TASTEBUD_"))))


@st.cache_resource(show_spinner=False, max_entries=16)
def _settings(environment: tuple[tuple[str, str], ...]) -> Settings:
    return build_settings()


@st.cache_resource(show_spinner=False)
def _registry(home: str) -> ModelRegistry:
    from tastebud.registry import ModelRegistry

    return ModelRegistry(settings())


def registry() -> ModelRegistry:
    """The model registry of the home (MLflow is imported on first use)."""
    return _registry(str(settings().home))


#: Seconds a registry listing is reused (a new decision in the log or a switch from the studio forgets it at once).
VERSIONS_TTL = 15


@st.cache_data(ttl=VERSIONS_TTL, show_spinner=False, max_entries=16)
def _versions(home: str, name: str, log_version: tuple[int, int]) -> list[ModelVersion]:
    return registry().list_versions(name)


def versions(name: str) -> list[ModelVersion]:
    """The registered versions of ``name`` (a listing through MLflow), cached for :data:`VERSIONS_TTL` seconds per
    home, name and version of the decision log (every promotion or rollback, from any process, logs a decision, so
    alias moves show at once); callers get their own copy."""
    from tastebud.errors import TastebudError
    from tastebud.registry.decisions import decision_log_version

    try:
        log_version = decision_log_version(settings())
    except TastebudError:
        log_version = (-1, 0)
    return _versions(str(settings().home), name, log_version)


@st.cache_resource(show_spinner=False)
def _store(url: str) -> Store | None:
    from tastebud.store import create_store

    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None  # nothing written yet: do not create a database just to read it
    return create_store(url=url)


def store() -> Store | None:
    """The event store and request log of the home, or ``None`` when none exists yet."""
    return _store(settings().store_url)


@st.cache_resource(show_spinner=False, max_entries=8)
def _bundle(home: str, name: str, version: int) -> Bundle:
    from tastebud.registry import load_bundle

    reg = registry()
    return load_bundle(reg.bundle_path(reg.get(name, version)), verifier=reg.verifier)


def version_bundle(name: str, version: int) -> Bundle:
    """A registered version's bundle, verified and loaded once per studio process.

    Raises:
        TastebudError: the version or its bundle cannot be found or is refused.
    """
    return _bundle(str(settings().home), name, int(version))


# ---------------------------------------------------------------------------------------------------- lazy tabs
def keep_widget_state(*keys: str) -> None:
    """Keep the values of widgets that this run does not draw (those of a closed lazy tab).

    Streamlit forgets a widget's value after a run that did not create the widget, so a user id typed in one tab of
    ``st.tabs(..., on_change="rerun")`` would be gone after a look at another tab. Set again through Session State
    (before the widget is created in this run, which it is not), the value stays until the widget is drawn again.
    """
    for key in keys:
        if key in st.session_state:
            st.session_state[key] = st.session_state[key]


# ---------------------------------------------------------------------------------------------------- banners
def attempt(action: Callable[[], T], what: str) -> T | None:
    """Run ``action``; on failure show one ``st.error`` banner saying what failed and why, and return ``None``."""
    try:
        return action()
    except ApiError as err:
        api_banner(err, what)
    except TastebudError as err:
        st.error(f"Cannot {what}: {err}", icon="⚠️")
    except Exception as err:  # a studio page never shows a traceback
        logger.exception("studio: %s failed", what)
        st.error(f"Cannot {what}: {type(err).__name__}: {err}", icon="⚠️")
    return None


def api_banner(err: ApiError, what: str) -> None:
    """The banner of a failed API call: unreachable, no model loaded, refused, or the API's own message."""
    if err.unreachable:
        st.error(
            f"**The Tastebud API is not reachable** at `{api_url()}`, so we cannot {what}. Start it with "
            f"`tastebud serve`, or point the studio elsewhere (`tastebud studio --api URL`).\n\n{err}",
            icon="🔌",
        )
    elif err.no_model:
        st.error(
            f"**No model is loaded** by the API yet, so we cannot {what}. Train and promote one "
            "(`tastebud train`, `tastebud models promote`), or wait for the server to finish loading.",
            icon="⏳",
        )
    elif err.refused:
        st.error(
            f"**The API refused the request** ({err.status}): set `TASTEBUD_API_KEY` to a key with the needed "
            f"scope.\n\n{err}",
            icon="🔒",
        )
    else:
        st.error(f"Cannot {what}: {err}", icon="⚠️")


# ---------------------------------------------------------------------------------------------------- catalogue
@dataclass(frozen=True)
class Served:
    """What the API serves: the model name, version and family, and the kind of catalogue (movies or music)."""

    name: str
    version: int | None
    family: str | None
    kind: str
    dataset: str

    @property
    def item_word(self) -> str:
        return KIND_WORDS[self.kind][0]

    @property
    def items_word(self) -> str:
        return KIND_WORDS[self.kind][1]

    @property
    def genres_word(self) -> str:
        """What the catalogue's ``genres`` are: tags for music (Last.fm has no genres), genres for movies."""
        return "tags" if self.kind == "music" else "genres"


def data_kind(dataset: str, items: Iterable[dict[str, Any]] = ()) -> str:
    """``music`` for Last.fm-like data (by name, or a catalogue without years: artists have none), else ``movies``."""
    lowered = dataset.lower()
    if any(word in lowered for word in ("lastfm", "last.fm", "music", "artist")):
        return "music"
    items = list(items)
    if items and not any(it.get("year") for it in items):
        return "music"
    return "movies"


@st.cache_data(ttl=30, show_spinner=False)
def _served(url: str) -> dict[str, Any]:
    api = client()
    health = api.health()
    model = health.get("model") or {}
    dataset = ""
    try:
        models = api.models()
        for row in models.get("versions") or []:
            if row.get("version") == model.get("version"):
                dataset = str((row.get("tags") or {}).get("tastebud.dataset") or "")
    except ApiError:
        pass
    return {"health": health, "model": model, "dataset": dataset}


def served() -> Served | None:
    """What the API serves now (cached 30 s), or ``None`` with a banner when it cannot say."""
    info = attempt(lambda: _served(api_url()), "ask the API what it serves")
    if info is None:
        return None
    model = info["model"]
    if not model:
        health = info["health"]
        reason = f" ({health['last_error']})" if health.get("last_error") else ""
        st.error(
            f"**No model is loaded** by the API at `{api_url()}` (status {health.get('status')}){reason}. Train and "
            "promote one, or wait for the server to finish loading.",
            icon="⏳",
        )
        return None
    items = catalogue()
    dataset = info["dataset"]
    return Served(model.get("name") or "", model.get("version"), model.get("type"), data_kind(dataset, items), dataset)


@st.cache_data(ttl=60, show_spinner=False)
def _catalogue(url: str, genre: str | None) -> list[dict[str, Any]]:
    api = client()
    try:
        return list(api.popular(LONG_K, genre)["recommendations"])
    except ApiError as err:
        if err.status != 422:  # a server with a smaller max_k
            raise
        return list(api.popular(20, genre)["recommendations"])


def catalogue(genre: str | None = None) -> list[dict[str, Any]]:
    """The most popular items (up to 100; of ``genre`` when given), best first; empty when the API cannot say."""
    try:
        return _catalogue(api_url(), genre)
    except ApiError:
        return []


@st.cache_data(ttl=300, show_spinner=False, max_entries=10_000)
def _item(url: str, item_id: str) -> dict[str, Any] | None:
    try:
        return client().item(item_id)
    except ApiError as err:
        if err.status == 404:
            return None
        raise


def item(item_id: str) -> dict[str, Any] | None:
    """Metadata of one item (``title``, ``genres``, ``year``, ``n_interactions``), or None when unknown."""
    try:
        return _item(api_url(), str(item_id))
    except ApiError:
        return None


def title(item_id: str, known: dict[str, dict[str, Any]] | None = None) -> str:
    """An item's title (from ``known`` records first, else the API), or its id when it has none."""
    record = (known or {}).get(str(item_id)) or item(item_id)
    return str((record or {}).get("title") or item_id)


def popularity(item_ids: Iterable[str]) -> dict[str, float]:
    """Training interaction counts of items (through ``/items``; unknown items count 0)."""
    return {str(i): float((item(str(i)) or {}).get("n_interactions") or 0) for i in item_ids}


def known_users(name: str, version: int | None) -> list[str]:
    """User ids to pick a random user from: the served version's training users, else the store's recent users."""
    if version is not None:
        try:
            users = version_bundle(name, version).model.users_
            if users is not None and len(users.ids):
                return [str(u) for u in users.ids[:50_000]]
        except Exception as err:  # a remote or unreadable registry: the store still knows users
            logger.info("studio: no users from the bundle: %s", err)
    st_ = store()
    if st_ is None:
        return []
    try:
        rows = st_.query_request_logs(limit=2000, newest_first=True)
    except TastebudError:
        return []
    return sorted({str(r["user_id"]) for r in rows if r.get("user_id")})


def random_user(users: list[str], seed: int | None = None) -> str | None:
    return random.Random(seed).choice(users) if users else None


#: Most items offered by the pickers (title search, "start fresh"): the most popular first, then by title.
MAX_PICKER_ITEMS = 20_000


@st.cache_resource(show_spinner=False, max_entries=8)
def _bundle_catalogue(home: str, name: str, version: int) -> list[dict[str, Any]]:
    meta = version_bundle(name, version).item_meta
    columns = [c for c in ("item_id", "title", "genres", "year", "tags") if c in meta.columns]
    rows = meta.select(columns).to_dicts()
    for row in rows:
        row["item_id"] = str(row["item_id"])
    return rows


@st.cache_resource(show_spinner=False, ttl=60, max_entries=8)
def _full_catalogue(url: str, home: str, name: str, version: int | None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    top = catalogue()
    rows: list[dict[str, Any]] = []
    if version is not None:
        try:
            rows = _bundle_catalogue(home, name, int(version))
        except Exception as err:  # a remote or unreadable registry: the popular list still helps
            logger.info("studio: no catalogue from the bundle: %s", err)
    seen = {str(it["item_id"]) for it in top}
    rest = sorted((r for r in rows if r["item_id"] not in seen), key=lambda r: str(r.get("title") or r["item_id"]))
    items = [*top, *rest][:MAX_PICKER_ITEMS]
    return items, {str(r["item_id"]): r for r in [*rows, *top]}


def full_catalogue(name: str, version: int | None) -> list[dict[str, Any]]:
    """Items to pick from: the served version's item metadata (popular first), else the popular list alone.

    Cached for a minute per API, home and version; callers must not modify the records.
    """
    return _full_catalogue(api_url(), str(settings().home), name, version)[0]


def catalogue_index(name: str, version: int | None) -> dict[str, Any]:
    """Item id -> record of the served version's whole catalogue (to name items without asking the API)."""
    return _full_catalogue(api_url(), str(settings().home), name, version)[1]


def label(record: dict[str, Any]) -> str:
    """``Title (year)``, or the id when the item has no title."""
    name = str(record.get("title") or record.get("item_id"))
    return f"{name} ({record['year']})" if record.get("year") else name


def served_name() -> tuple[Served | None, str]:
    """What the API serves (a banner when it cannot say) and the model name the operator pages read: the served
    one, else ``serving.model_name`` from the settings (the registry and store still answer when the API is down)."""
    srv = served()
    return srv, srv.name if srv is not None else settings().serving.model_name


def evaluation_of(source: str) -> dict[str, Any] | None:
    """The offline evaluation (means and 95% bootstrap intervals) logged beside a version's bundle, when the run's
    artifacts are local (``<run>/evaluation/comparison.json``); ``None`` otherwise. Read once per file version
    (path, size and modification time)."""
    from tastebud.registry.aliases import local_path

    bundle = local_path(source)
    path = bundle.parent / "evaluation" / "comparison.json" if bundle is not None else None
    try:
        stat = path.stat() if path is not None else None
    except OSError:
        return None
    if path is None or stat is None or not path.is_file():
        return None
    return _evaluation(str(path), stat.st_size, stat.st_mtime_ns)


@st.cache_data(show_spinner=False, max_entries=256)
def _evaluation(path: str, size: int, mtime_ns: int) -> dict[str, Any] | None:
    import json

    try:
        models = json.loads(Path(path).read_text(encoding="utf-8")).get("models") or []
    except (OSError, ValueError):
        return None
    return dict(models[0]) if models else None


def drift_reports() -> list[Path]:
    """Drift report files (``<home>/monitoring/drift/<time>/report.json``), newest first."""
    root = settings().home / "monitoring" / "drift"
    return sorted(root.glob("*/report.json"), reverse=True) if root.is_dir() else []


def refresh_served() -> None:
    """Forget the cached answer of what the API serves and the registry listings (after a switch)."""
    _served.clear()
    _versions.clear()


__all__ = [
    "LONG_K",
    "Served",
    "api_banner",
    "api_url",
    "attempt",
    "catalogue",
    "catalogue_index",
    "client",
    "data_kind",
    "drift_reports",
    "evaluation_of",
    "full_catalogue",
    "item",
    "keep_widget_state",
    "known_users",
    "label",
    "popularity",
    "random_user",
    "refresh_served",
    "registry",
    "served",
    "served_name",
    "settings",
    "store",
    "title",
    "version_bundle",
    "versions",
]
