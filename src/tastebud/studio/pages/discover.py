"""Discover: find a user or start fresh, recommendations with their reasons, moods, surprises, similar items and
top charts, all through the HTTP API (new users' picks go in as events: cold start through the real-time path).
Each tab runs only when it is open (``st.tabs(on_change="rerun")``)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import streamlit as st

from tastebud.studio import charts, resources
from tastebud.studio.client import like_events
from tastebud.studio.moods import load_moods, split_mood
from tastebud.studio.pages._items import fallback_note, show_items
from tastebud.studio.ranking import catalogue_facets, surprise

#: How far back "trending" looks in the store's events.
TRENDING_WINDOW = timedelta(days=7)
#: The widgets of each tab (their values are kept while another tab is open).
FOR_YOU_KEYS = ("discover_mode", "discover_user", "discover_picks", "discover_k", "discover_mood",
                "discover_surprise", "discover_genres", "discover_years")  # fmt: skip
SIMILAR_KEYS = ("similar_query", "similar_pick")
TOP_CHARTS_KEYS = ("chart_genre",)


def render() -> None:
    st.title("🔎 Discover")
    srv = resources.served()
    if srv is None:
        st.stop()
    assert srv is not None
    st.caption(f"Served: **{srv.name}** version {srv.version} ({srv.family}) · {srv.items_word}")
    # Only the open tab runs and is drawn (the top charts' three charts and API calls when that tab is opened); the
    # other tabs' inputs keep their values meanwhile.
    you, similar, top = st.tabs(
        ["For you", f"Similar {srv.items_word}", "Top charts"], key="discover_tab", on_change="rerun"
    )
    for tab, keys in ((you, FOR_YOU_KEYS), (similar, SIMILAR_KEYS), (top, TOP_CHARTS_KEYS)):
        if not tab.open:
            resources.keep_widget_state(*keys)
    with you:
        if you.open:
            for_you(srv)
    with similar:
        if similar.open:
            similar_items(srv)
    with top:
        if top.open:
            top_charts(srv)


# ---------------------------------------------------------------------------------------------------- for you
def for_you(srv: resources.Served) -> None:
    mode = st.radio("Who is asking?", ["Find a user", "Start fresh"], horizontal=True, key="discover_mode")
    user_id = find_user(srv) if mode == "Find a user" else start_fresh(srv)
    if not user_id:
        return
    st.session_state["studio_user"] = user_id
    options = list_options(srv)
    k = options.pop("k")
    mood, lucky = options.pop("mood"), options.pop("surprise")
    ask = resources.LONG_K if (mood or lucky) else k
    response = resources.attempt(
        lambda: resources.client().recommend(user_id, ask, **options), f"get recommendations for {user_id!r}"
    )
    if response is None:
        return
    fallback_note(response, srv)
    if response.get("realtime_events"):
        st.caption(f"⚡ Personalised live from {response['realtime_events']} recent event(s) of this user.")
    candidates: list[dict[str, Any]] = list(response["recommendations"])
    groups = [candidates]
    if mood:  # the mood's matches first
        preset = load_moods()[mood]
        groups = list(split_mood(candidates, preset))
        st.caption(f"{preset.title}: {len(groups[0])} of {len(candidates)} candidates fit the mood; they come first.")
    extra = None
    if lucky:  # within each group, the best few re-ranked toward the long tail
        pool = max(k * 3, 30)
        popularity = resources.popularity(str(it["item_id"]) for group in groups for it in group[:pool])
        groups = [surprise(group[:pool], popularity) for group in groups]
        extra = "popularity"
        st.caption("🎲 Surprise: the list re-ranked toward the long tail (score ÷ popularity^0.6).")
    items = [it for group in groups for it in group]
    show_items(items[:k], srv, known=resources.catalogue_index(srv.name, srv.version), extra=extra)
    if response.get("note"):
        st.caption(response["note"])


def find_user(srv: resources.Served) -> str | None:
    search, dice = st.columns([4, 1], vertical_alignment="bottom")
    if dice.button("🎲 Random user", key="random_user"):
        users = resources.known_users(srv.name, srv.version)
        pick = resources.random_user(users)
        if pick is None:
            st.warning("No known users to pick from: the served model's users and the store are unavailable.")
        else:
            st.session_state["discover_user"] = pick
    user_id = search.text_input("User id", key="discover_user", placeholder="a user id, e.g. 196").strip()
    if not user_id:
        st.info("Type a user id, pick a random user, or start fresh with a few picks of your own.")
        return None
    return user_id


def start_fresh(srv: resources.Served) -> str | None:
    state = st.session_state
    fresh = state.setdefault("fresh_user", f"studio-{uuid.uuid4().hex[:10]}")
    liked: list[str] = state.setdefault("fresh_liked", [])
    catalog = resources.full_catalogue(srv.name, srv.version)
    by_id = {str(it["item_id"]): it for it in catalog}
    picks = st.multiselect(
        f"Pick a few {srv.items_word} you like",
        list(by_id),
        format_func=lambda i: resources.label(by_id[i]) if i in by_id else i,
        key="discover_picks",
        placeholder=f"search {srv.items_word} by title",
    )
    save, reset = st.columns([1, 1])
    if save.button("👍 Save my picks", key="save_picks", disabled=not picks, type="primary"):
        new = [p for p in picks if p not in liked]
        if new:
            answer = resources.attempt(
                lambda: resources.client().post_events(like_events(fresh, new)), "store your picks"
            )
            if answer is not None:
                liked.extend(new)
                st.success(f"Stored {answer.get('accepted', 0)} like(s) as events of **{fresh}**.")
    if reset.button("↺ Start over", key="reset_fresh"):
        state["fresh_user"] = f"studio-{uuid.uuid4().hex[:10]}"
        state["fresh_liked"] = []
        st.rerun()
    if not liked:
        st.info(f"Pick a few {srv.items_word} and save them: your list appears here, built live from your picks.")
        return None
    st.caption(f"You are **{fresh}**; you like " + ", ".join(resources.label(by_id.get(i, {"item_id": i}))
                                                            for i in liked))  # fmt: skip
    return str(fresh)


def list_options(srv: resources.Served) -> dict[str, Any]:
    """The list's controls: length, genres and years (only when the catalogue has them), mood, surprise."""
    genres, years = catalogue_facets(resources.full_catalogue(srv.name, srv.version))
    moods = load_moods()
    with st.expander("Filters and moods", expanded=True):
        c1, c2, c3 = st.columns(3)
        k = c1.slider("How many", 5, 30, 10, key="discover_k")
        mood = c2.selectbox(
            "Mood", [None, *moods], format_func=lambda m: "any mood" if m is None else moods[m].title,
            key="discover_mood",
        )  # fmt: skip
        lucky = c3.toggle("🎲 Surprise me", key="discover_surprise", help="Lean toward the long tail.")
        chosen: list[str] = []
        year_min = year_max = None
        if genres or years:
            g, y = st.columns(2)
            if genres:
                chosen = g.multiselect(f"{srv.genres_word.capitalize()} (any of)", genres, key="discover_genres")
            if years and years[0] < years[1]:
                low, high = y.slider("Years", years[0], years[1], years, key="discover_years")
                if (low, high) != years:
                    year_min, year_max = low, high
    return {"k": k, "mood": mood, "surprise": lucky, "genres": chosen, "year_min": year_min, "year_max": year_max}


# ---------------------------------------------------------------------------------------------------- similar
def similar_items(srv: resources.Served) -> None:
    query = st.text_input(f"Search a {srv.item_word} by title", key="similar_query").strip().lower()
    if not query:
        st.caption(f"Type part of a title to find {srv.items_word} like it.")
        return
    catalog = resources.full_catalogue(srv.name, srv.version)
    matches = [it for it in catalog if query in str(it.get("title") or it["item_id"]).lower()][:50]
    if not matches:
        st.warning(f"No {srv.item_word} title contains “{query}”.")
        return
    by_id = {str(it["item_id"]): it for it in matches}
    pick = st.selectbox(f"{len(matches)} match(es)", list(by_id), format_func=lambda i: resources.label(by_id[i]),
                        key="similar_pick")  # fmt: skip
    if pick is None:
        return
    response = resources.attempt(lambda: resources.client().similar(pick, 10), f"find {srv.items_word} like it")
    if response is None:
        return
    fallback_note(response, srv)
    st.subheader(f"Like {resources.label(by_id[pick])}")
    show_items(response["recommendations"], srv)


# ---------------------------------------------------------------------------------------------------- charts
def top_charts(srv: resources.Served) -> None:
    overall, genre, trending = st.columns(3)
    with overall:
        st.subheader("Overall")
        chart_list(resources.catalogue()[:15], srv, "overall")
    with genre:
        st.subheader(f"By {srv.genres_word[:-1]}")
        genres, _ = catalogue_facets(resources.full_catalogue(srv.name, srv.version))
        if not genres:
            st.caption(f"The {srv.items_word} have no {srv.genres_word}.")
        else:
            pick = st.selectbox(srv.genres_word[:-1].capitalize(), genres, key="chart_genre")
            chart_list(resources.catalogue(pick)[:15], srv, "genre")
    with trending:
        st.subheader(f"Trending ({TRENDING_WINDOW.days} days)")
        rows = trending_items()
        if rows is None:
            st.caption("No event store yet: trending needs recent events.")
        elif not rows:
            st.caption(f"No events in the last {TRENDING_WINDOW.days} days.")
        else:
            known = {str(it["item_id"]): it for it in resources.catalogue()}
            data = [{"title": resources.title(i, known), "events": n} for i, n in rows]
            st.altair_chart(charts.bars(data, "events", "title", y_title=None), width="stretch")


def chart_list(items: list[dict[str, Any]], srv: resources.Served, key: str) -> None:
    if not items:
        st.caption(f"No {srv.items_word}.")
        return
    data = [{"title": resources.label(it), "popularity": float(it.get("score") or 0.0)} for it in items]
    st.altair_chart(charts.bars(data, "popularity", "title", y_title=None), width="stretch")


@st.cache_data(ttl=60, show_spinner=False)
def _trending(url: str, since: datetime) -> list[tuple[str, int]] | None:
    store = resources.store()
    if store is None:
        return None
    frame = store.events_frame(since=since)  # columnar: millions of events in seconds, no object per row
    top = frame.group_by("item_id").len().sort(["len", "item_id"], descending=[True, False]).head(15)
    return [(str(item), int(n)) for item, n in top.iter_rows()]


def trending_items() -> list[tuple[str, int]] | None:
    """The most frequent items of the store's events of the last week (``None``: no store)."""
    since = (datetime.now(UTC) - TRENDING_WINDOW).replace(minute=0, second=0, microsecond=0)
    try:
        return _trending(resources.settings().store_url, since)
    except Exception:  # an unreadable store: no chart, no traceback
        return None


if __name__ == "__main__":
    render()
