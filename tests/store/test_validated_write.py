"""The store's fast path for events the stream handlers validated: same rows as the validating path."""

from __future__ import annotations

from pathlib import Path

import pytest

from tastebud.errors import DataValidationError
from tastebud.store import create_store
from tastebud.stream.handlers import normalise_events


def test_validated_write_stores_the_same_rows(tmp_path: Path) -> None:
    raw = [
        {"event_id": "a", "user_id": 1, "item_id": "x", "rating": 4.5, "timestamp": 1_700_000_000},
        {"event_id": "b", "user_id": "2", "item_id": "y", "kind": "play", "value": 3, "timestamp": 1_700_000_100},
        {"event_id": "a", "user_id": "1", "item_id": "x", "rating": 4.5, "timestamp": 1_700_000_000},
    ]
    valid, rejected = normalise_events(raw, source="test")
    assert not rejected
    records = [e.to_record() for e in valid]
    stores = {}
    for validated in (False, True):
        store = create_store(url=f"sqlite:///{tmp_path / f'{validated}.db'}")
        store.init_schema()
        assert store.write_events(records, validated=validated) == (2, 1)
        assert store.write_events(records, validated=validated) == (0, 3)
        stores[validated] = [
            {k: v for k, v in row.items() if k not in {"id", "received_at"}} for row in store.query_events()
        ]
        store.close()
    assert stores[True] == stores[False]
    assert stores[True][0]["timestamp"].timestamp() == 1_700_000_000


def test_default_path_still_validates(tmp_path: Path) -> None:
    store = create_store(url=f"sqlite:///{tmp_path / 'v.db'}")
    store.init_schema()
    with pytest.raises(DataValidationError, match="event 0"):
        store.write_events([{"event_id": "a", "user_id": "1", "item_id": "x", "kind": "view"}])
    store.close()
