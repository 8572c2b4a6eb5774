"""User: a user's history beside the lists of the served model and of every chosen registered version, with their
overlap. The served list comes from the API; the versions' lists are computed here from their bundles (the API
serves one version per user), the same way the server scores: known users by the model, others from their events."""

from __future__ import annotations

from typing import Any

import streamlit as st

from tastebud.studio import charts, resources
from tastebud.studio.client import ApiError
from tastebud.studio.pages._items import fallback_note, show_items
from tastebud.studio.ranking import overlap_matrix, shared_items

#: Length of the compared lists.
K = 10


def render() -> None:
    st.title("👤 User")
    srv = resources.served()
    if srv is None:
        st.stop()
    assert srv is not None
    search, dice = st.columns([4, 1], vertical_alignment="bottom")
    if dice.button("🎲 Random user", key="user_random"):
        pick = resources.random_user(resources.known_users(srv.name, srv.version))
        if pick is not None:
            st.session_state["user_id"] = pick
    if "user_id" not in st.session_state and st.session_state.get("studio_user"):
        st.session_state["user_id"] = st.session_state["studio_user"]
    user_id = search.text_input("User id", key="user_id", placeholder="a user id, or pick a random one").strip()
    if not user_id:
        st.info("Type a user id (or come from Discover) to see their history and every version's list.")
        return
    events = user_events(user_id)
    history_col, lists_col = st.columns([1, 3])
    with history_col:
        show_history(user_id, srv, events)
    with lists_col:
        compare_versions(user_id, srv, events)


def user_events(user_id: str) -> list[dict[str, Any]]:
    """The user's stored events (newest last; empty without a store)."""
    store = resources.store()
    if store is None:
        return []
    try:
        return store.query_events(user_id=user_id, limit=500)
    except Exception:  # an unreadable store: the history from the API still shows
        return []


def show_history(user_id: str, srv: resources.Served, events: list[dict[str, Any]]) -> None:
    st.subheader("History")
    try:
        history = resources.client().history(user_id, 30)
    except ApiError as err:
        if err.status != 404:
            resources.api_banner(err, "read the user's history")
            return
        st.info(f"**{user_id}** is not in the served model's training data: the API answers them with a fallback "
                "(popular items), or from their events once they have some.")  # fmt: skip
        history = {"total": 0, "items": []}
    if history["items"]:
        st.caption(f"{history['total']} training interaction(s), strongest first")
        for it in history["items"]:
            st.markdown(f"- {resources.label(it)} · {float(it['value']):g}")
    if events:
        known = resources.catalogue_index(srv.name, srv.version)
        st.caption(f"{len(events)} stored event(s) (the real-time path)")
        for e in events[-15:][::-1]:
            value = e.get("rating") if e.get("rating") is not None else e.get("value")
            st.markdown(
                f"- {resources.title(str(e['item_id']), known)} · {e.get('kind')} {value if value is not None else ''}"
            )


def compare_versions(user_id: str, srv: resources.Served, events: list[dict[str, Any]]) -> None:
    st.subheader("Lists side by side")
    versions = resources.attempt(lambda: resources.registry().list_versions(srv.name), "read the registry")
    names: dict[str, int] = {}
    if versions:
        for mv in sorted(versions, key=lambda v: (not v.aliases, -v.version)):
            names[f"v{mv.version}" + (f" ({', '.join(mv.aliases)})" if mv.aliases else "")] = mv.version
    default = [n for n in names if "(" in n][:3] or list(names)[:2]
    chosen = st.multiselect("Versions", list(names), default=default, key="user_versions")
    lists: dict[str, list[dict[str, Any]]] = {}
    notes: dict[str, str | None] = {}
    served = resources.attempt(lambda: resources.client().recommend(user_id, K), "get the served list")
    if served is not None:
        label = f"served: v{served['model']['version']}"
        lists[label] = served["recommendations"]
        notes[label] = served.get("fallback_reason")
    for name in chosen:
        try:
            lists[name], notes[name] = version_list(srv.name, names[name], user_id, events)
        except Exception as err:  # a refused bundle: say so in its column
            lists[name], notes[name] = [], f"cannot score: {err}"
    if not lists:
        return
    ids = {name: [str(it["item_id"]) for it in items] for name, items in lists.items()}
    shared = shared_items(ids)
    columns = st.columns(len(lists))
    for column, (name, items) in zip(columns, lists.items(), strict=True):
        with column:
            st.markdown(f"**{name}**")
            if notes.get(name):
                st.caption(f"ℹ️ {notes[name]}")
            show_items(items, srv, highlight=shared, compact=True)
    if served is not None:
        fallback_note(served, srv)
    if len(lists) > 1:
        st.caption(f"⭐ in two lists or more: {len(shared)} item(s). Jaccard overlap of the lists:")
        st.altair_chart(charts.overlap_heatmap(overlap_matrix(ids)), width="content")


def version_list(
    name: str, version: int, user_id: str, events: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], str | None]:
    """A version's top-K for the user, computed from its bundle, and a note on how (``None``: the model's own)."""
    bundle = resources.version_bundle(name, version)
    model = bundle.model
    meta = resources.catalogue_index(name, version)
    note = None
    if model.users_ is not None and user_id in model.users_:
        recs = model.recommend([user_id], K, explain=True)
    elif events:
        items = [str(e["item_id"]) for e in events]
        values = [float(e.get("rating") or e.get("value") or 1.0) for e in events]
        recs = model.recommend_history(items, values, K, explain=True)
        note = f"new user: folded in from {len(items)} event(s)"
    else:
        recs = bundle.fallback["popular"].recommend_history([], k=K)
        note = "unknown user: popular items (fallback)"
    because = recs.explanations[0] if recs.explanations else [[] for _ in recs.item_ids[0]]
    out = [
        {**meta.get(str(i), {"item_id": str(i)}), "score": float(s), "because": list(b)}
        for i, s, b in zip(recs.item_ids[0], recs.scores[0], because, strict=True)
    ]
    return out, note


if __name__ == "__main__":
    render()
