"""Provenance of a response: which model, code, data and image produced it.

The loaded bundle's manifest is the one source of truth: the static part is read from it once, when the bundle
is loaded, and each response adds its request id, timestamp and latency.
"""

from __future__ import annotations

import os
import random
import time
from datetime import UTC, datetime
from typing import Any

#: Environment variable holding the container image digest (set by the deployment).
IMAGE_DIGEST_ENV = "TASTEBUD_IMAGE_DIGEST"


def image_digest() -> str | None:
    """The container image digest from ``TASTEBUD_IMAGE_DIGEST``, or ``None`` outside a container build."""
    return os.environ.get(IMAGE_DIGEST_ENV) or None


def static_provenance(
    manifest: dict[str, Any], *, name: str, version: int | None, image: str | None, signed: bool = False
) -> dict[str, Any]:
    """The request-independent part of the provenance block, from a bundle manifest.

    Args:
        manifest: the bundle's parsed ``manifest.json``.
        name: the registered model name.
        version: the registered version (``None`` for a bundle loaded outside the registry).
        image: the container image digest, if any.
        signed: whether the manifest's signature was verified against a configured key when it was loaded.
    """
    data = manifest.get("data") or {}
    model = manifest.get("model") or {}
    return {
        "model_name": name,
        "model_version": version,
        "model_type": model.get("name"),
        "git_sha": manifest.get("git_sha"),
        "data_snapshot_id": data.get("snapshot_id"),
        "bundle_created_at": manifest.get("created_at"),
        "container_image_digest": image,
        "signed": signed,
    }


def new_request_id() -> str:
    """A fresh, time-ordered request id: 32 hex characters, the UUIDv7 layout without dashes.

    48 bits of Unix milliseconds, then 80 random bits. Ids of later requests sort after earlier ones, so the
    request log's primary-key index grows at its right edge; random ids (uuid4) scatter every insert across the
    whole index, which on a log of millions of rows cost more CPU than serving the request. The random part
    comes from :mod:`random` (seeded from the OS, reseeded in forked workers): ids must be unique, not
    unguessable, and reading the OS's entropy per request costs a system call.
    """
    return f"{time.time_ns() // 1_000_000:012x}{random.getrandbits(80):020x}"


def utc_now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def request_provenance(
    static: dict[str, Any], *, request_id: str, timestamp: datetime, latency_ms: float
) -> dict[str, Any]:
    """The full provenance block of one response."""
    return {
        "request_id": request_id,
        **static,
        "timestamp": timestamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "latency_ms": round(latency_ms, 3),
    }
