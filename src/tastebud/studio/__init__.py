"""Tastebud Studio: a Streamlit app for people and operators.

Pages: *Discover* (find or become a user, recommendations with their reasons, moods, surprises, similar items, top
charts), *User* (history beside every registered version's list), *Models* (versions, metrics with intervals,
decisions, drift, promote and roll back) and *Operations* (health, traffic, latency, errors, fallbacks,
availability, switches and retrains, experiments).

The studio is a client of the HTTP API (:mod:`tastebud.studio.client`) and reads the registry and the store for the
operator pages; it never imports serving's internals. Start it with ``tastebud studio`` or :func:`launch`.
"""

from tastebud.studio.launch import API_ENV, API_KEY_ENV, APP_PATH, launch

__all__ = ["API_ENV", "API_KEY_ENV", "APP_PATH", "launch"]
