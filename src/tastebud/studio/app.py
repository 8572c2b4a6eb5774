"""Tastebud Studio, the Streamlit entry script: ``streamlit run app.py`` (or ``tastebud studio``).

Pages (``st.navigation``): Discover at ``/``, User at ``/user``, Models at ``/models``, Operations at
``/operations``. The API's base URL comes from ``TASTEBUD_STUDIO_API``, an API key from ``TASTEBUD_API_KEY``, the
home (registry and store of the operator pages) from ``TASTEBUD_HOME``.
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from tastebud.studio import resources

PAGES = Path(__file__).resolve().parent / "pages"


def main() -> None:
    st.set_page_config(page_title="Tastebud Studio", page_icon="🍓", layout="wide")
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
