"""Tastebud Studio, the Streamlit entry script: ``streamlit run app.py`` (or ``tastebud studio``).

Pages (``st.navigation``): Discover at ``/``, User at ``/user``, Models at ``/models``, Operations at
``/operations``. The API's base URL comes from ``TASTEBUD_STUDIO_API``, an API key from ``TASTEBUD_API_KEY``, the
home (registry and store of the operator pages) from ``TASTEBUD_HOME``.
"""

from __future__ import annotations

import gc
import importlib
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path

import streamlit as st

from tastebud.studio import resources

PAGES = Path(__file__).resolve().parent / "pages"
#: What the pages import (pandas, Altair, polars, MLflow through the registry): imported once per process.
WARM_MODULES = (
    "pandas",
    "altair",
    "polars",
    "tastebud.studio.charts",
    "tastebud.monitoring.kpis",
    "tastebud.registry",
    "tastebud.store",
)
#: Longest a session waits for the process's warm-up before rendering anyway, s.
WARM_WAIT_S = 120.0
logger = logging.getLogger(__name__)


@dataclass
class WarmUp:
    """The process's warm-up: the first session takes ``owner`` (never given back) and sets ``done`` when warm."""

    owner: threading.Lock = field(default_factory=threading.Lock)
    done: threading.Event = field(default_factory=threading.Event)


@st.cache_resource(show_spinner=False)
def warm_state() -> WarmUp:
    return WarmUp()


def warm_caches() -> bool:
    """Import what the pages need and fill the operator pages' caches (the registry listing through MLflow, the
    store), so that each page's first visit is warm. Returns whether everything warmed.

    :func:`main` runs it once per studio process, in the first session after its page has rendered; ``tastebud
    studio`` runs the app once as it starts (:func:`tastebud.studio.launch.warm_up`), so this happens before the
    first visitor. Other sessions wait for it: importing MLflow or pandas from two threads at once can leave a
    module half-initialised.
    """
    try:
        for module in WARM_MODULES:
            importlib.import_module(module)
        resources.store()
        resources.versions(resources.settings().serving.model_name)
    except Exception as err:  # only a warm-up: the pages show what fails
        logger.info("studio: warm-up stopped: %s", err)
        return False
    return True


def freeze_heap() -> int:
    """Collect once, then move every object the process holds (modules, caches) out of the cyclic garbage
    collector's reach (``gc.freeze``); returns how many objects that froze.

    Streamlit collects all generations after every script run (``runner.postScriptGC``), holding the GIL while the
    page's last elements wait to be sent: with pandas, Altair, polars and MLflow imported that scans some 270,000
    objects, about 150 ms per page load, for objects that live as long as the process. Frozen, a collection scans
    only what was made since (a few ms). Objects still go when nothing refers to them; only reference cycles among
    frozen objects are never collected.
    """
    before = gc.get_freeze_count()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count() - before


def main() -> None:
    st.set_page_config(page_title="Tastebud Studio", page_icon="🍓", layout="wide")
    warm = warm_state()
    warming = not warm.done.is_set() and warm.owner.acquire(blocking=False)
    if not warming and not warm.done.wait(WARM_WAIT_S):
        logger.info("studio: the warm-up is still running after %.0f s; rendering anyway", WARM_WAIT_S)
    try:
        _run()
    finally:
        if warming:  # this session warms the process, after its own page (also when the page stopped or reran)
            try:
                warm_caches()
                freeze_heap()
            finally:
                warm.done.set()


def _run() -> None:
    nav = st.navigation(
        {
            "For people": [
                st.Page(PAGES / "discover.py", title="Discover", icon="🔎", default=True),
                st.Page(PAGES / "user.py", title="User", icon="👤", url_path="user"),
            ],
            "For operators": [
                st.Page(PAGES / "models.py", title="Models", icon="🧪", url_path="models"),
                st.Page(PAGES / "operations.py", title="Operations", icon="📈", url_path="operations"),
            ],
        }
    )
    with st.sidebar:
        st.markdown("### 🍓 Tastebud Studio")
        st.caption(f"API: `{resources.api_url()}`")
        st.caption(f"Home: `{resources.settings().home}`")
    nav.run()


if __name__ == "__main__":
    main()
