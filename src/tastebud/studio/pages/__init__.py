"""The studio's pages: each module is a Streamlit page script (``render()`` runs when Streamlit executes it)."""
