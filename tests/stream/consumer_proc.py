"""A consumer process for the crash test: consumes into a SQLite store and can be told to hang mid-batch.

Usage: ``python consumer_proc.py BOOTSTRAP GROUP DB_URL MARKER HANG_AFTER TOPIC [TOPIC ...]``. After ``HANG_AFTER``
batches are written to the store (and before their offsets are committed) it creates ``MARKER`` and sleeps, so the
test can SIGKILL it exactly between the store write and the commit.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tastebud.store import create_store
from tastebud.stream.consumer import EventConsumer


class HangingStore:
    def __init__(self, store, marker: Path, hang_after: int) -> None:
        self.store, self.marker, self.hang_after, self.batches = store, marker, hang_after, 0

    def write_events(self, records):
        result = self.store.write_events(records)
        self.batches += 1
        if self.batches >= self.hang_after:
            self.marker.write_text(str(self.batches))
            time.sleep(3600)
        return result

    def write_dead_letters(self, records):
        return self.store.write_dead_letters(records)


def main(argv: list[str]) -> None:
    bootstrap, group, url, marker, hang_after, *topics = argv
    store = create_store(url=url)
    store.init_schema()
    consumer = EventConsumer(
        HangingStore(store, Path(marker), int(hang_after)),
        bootstrap,
        topics=topics,
        group_id=group,
        batch_size=100,
        config={"session.timeout.ms": 1000, "heartbeat.interval.ms": 100},
    )
    consumer.run(max_seconds=60)


if __name__ == "__main__":
    main(sys.argv[1:])
