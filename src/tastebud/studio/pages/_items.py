"""How the pages show a list of items: title, year, genres, score and "because you liked ..." with titles."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import streamlit as st

from tastebud.studio import resources

#: What the API's fallback reasons mean, for people.
FALLBACK_WORDS = {
    "unknown_user": "this user is unknown to the model, so these are the most popular {items} (a fallback)",
    "sparse_history": "this user has only a few interactions, so the list comes from {items} like theirs (content)",
    "cold_item": "this {item} is new to the model, so similar {items} come from its metadata (content)",
}


def fallback_note(response: dict[str, Any], srv: resources.Served) -> None:
    """An info banner when the API answered with a fallback, saying why in words."""
    if not response.get("is_fallback"):
        return
    reason = response.get("fallback_reason") or "fallback"
    words = FALLBACK_WORDS.get(reason, "the API answered with a fallback list ({reason})")
    st.info(
        "Fallback: " + words.format(items=srv.items_word, item=srv.item_word, reason=reason) + f" · `{reason}`",
        icon="ℹ️",
    )


def show_items(
    items: Sequence[dict[str, Any]],
    srv: resources.Served,
    *,
    known: dict[str, dict[str, Any]] | None = None,
    highlight: Iterable[str] = (),
    extra: str | None = None,
    compact: bool = False,
) -> None:
    """Each item as a small card: rank and title (year), genres, score, and the titles that explain it.

    Args:
        known: item records already at hand (id -> record) to name explaining items without asking the API.
        highlight: ids marked with a star (shared between lists).
        extra: a field shown after the score (``surprise``, ``popularity``).
        compact: one line per item (the side-by-side columns of the User page).
    """
    if not items:
        st.caption(f"No {srv.items_word} to show.")
        return
    known = {**{str(it["item_id"]): it for it in items}, **(known or {})}
    marked = set(highlight)
    liked_word = "listened to" if srv.kind == "music" else "liked"
    for rank, it in enumerate(items, start=1):
        star = "⭐ " if str(it["item_id"]) in marked else ""
        head = f"{rank}. {star}**{resources.label(it)}**"
        facts = [", ".join(it.get("genres") or ())] if it.get("genres") else []
        if it.get("score") is not None:
            facts.append(f"score {float(it['score']):.3f}")
        if extra and it.get(extra) is not None:
            facts.append(f"{extra} {float(it[extra]):.3g}")
        because = [resources.title(i, known) for i in it.get("because") or ()]
        if compact:
            st.markdown(head + (f"  \n<small>{' · '.join(facts)}</small>" if facts else ""), unsafe_allow_html=True)
            continue
        with st.container(border=True):
            st.markdown(head)
            if facts:
                st.caption(" · ".join(facts))
            if because:
                st.caption(f"Because you {liked_word} " + ", ".join(f"*{b}*" for b in because))
