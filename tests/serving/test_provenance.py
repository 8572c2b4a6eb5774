"""Request ids: unique, 32 hex characters, and ordered by time (so the request log's key index appends)."""

from __future__ import annotations

import time

from tastebud.serving.provenance import new_request_id


def test_request_ids_are_hex_unique_and_time_ordered() -> None:
    ids = []
    for _ in range(5):
        ids.extend(new_request_id() for _ in range(200))
        time.sleep(0.002)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert len(set(ids)) == len(ids)
    prefixes = [i[:12] for i in ids]
    assert prefixes == sorted(prefixes)
    assert abs(int(ids[-1][:12], 16) - time.time_ns() // 1_000_000) < 5_000
