"""The store's schema revisions, oldest first: ``r0001_baseline``, ``r0002_decisions``, ``r0003_trigger_state``."""
