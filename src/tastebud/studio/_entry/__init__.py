"""The script ``streamlit run`` starts (see ``studio.py``)."""
