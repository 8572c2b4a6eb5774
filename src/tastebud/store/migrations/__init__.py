"""Alembic migrations of the store: ``env.py`` and ``versions/``, run in code by :mod:`tastebud.store.migrate`."""
