"""Model bundles: a directory with a manifest, the model's arrays, fallback models and item metadata.

A bundle is everything serving needs to answer requests, written as plain ``.npy`` arrays and JSON (never
pickle). ``manifest.json`` is the one source of truth for provenance (model parameters, data snapshot, git SHA,
metrics) and lists the sha256 of every other file, so a truncated, altered, missing or unexpected file is
refused on load with an error naming it. A loaded array holding NaN or inf is refused too (a registry must never
publish a broken model, even one whose checksums were recomputed). When signing is configured the manifest is
signed (``signature.json``, :mod:`tastebud.registry.signing`), and a bundle altered after signing is refused.

Layout::

    manifest.json
    model/                 the main model (Recommender.save)
    fallback/popular/      always
    fallback/content/      when the training data has item metadata
    shared/                arrays that several models hold byte for byte, stored once (schema version 2)
    items.json             item metadata aligned with the model's item ids
    signature.json         signature of manifest.json (only when signing is configured; not in the manifest)

Shared arrays: the main model and its fallbacks are fitted on the same training data, so each saves the same
user x item matrix of what users have seen (``seen_indices.npy``, ``seen_indptr.npy``, often ``seen_data.npy``).
:func:`write_bundle` keeps one copy of every ``.npy`` array of at least :data:`SHARE_MIN_BYTES` that several
parts hold byte for byte, as ``shared/<sha256 prefix>.npy``, and the manifest's ``shared`` field maps each
model path to it (``{"model/seen_indices.npy": "shared/3fa1....npy", ...}``). The shared file is listed in
``files`` like every other, so its checksum (and the signature over the manifest) covers it. Loading resolves the
links, and the models that share an array share it in memory too. A bundle with shared arrays has schema version
2; one without (every small bundle, and every bundle written before) keeps version 1 and loads as before.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from tastebud.data.dataset import Dataset
from tastebud.data.io import atomic_dir
from tastebud.errors import BundleError
from tastebud.models import MODELS, model_class
from tastebud.models.base import Recommender, linked_arrays, read_json
from tastebud.registry.signing import SIGNATURE

if TYPE_CHECKING:
    from tastebud.registry.signing import Signer, Verifier

#: Version of the bundle layout and manifest when every model holds its own arrays.
BUNDLE_SCHEMA_VERSION: int = 1
#: Version of a bundle that stores arrays shared by several models once (``shared/`` and ``manifest["shared"]``).
SHARED_SCHEMA_VERSION: int = 2
#: Versions a loader accepts; it refuses any other.
SUPPORTED_SCHEMA_VERSIONS: tuple[int, ...] = (BUNDLE_SCHEMA_VERSION, SHARED_SCHEMA_VERSION)
MANIFEST = "manifest.json"
ITEMS_FILE = "items.json"
SHARED_DIR = "shared"
#: Arrays at least this large that several models of a bundle hold byte for byte are stored once.
SHARE_MIN_BYTES: int = 1 << 20
_CHUNK = 1 << 20
#: Elements checked for NaN/inf at a time (bounds the temporary mask of a large memory-mapped array).
_BLOCK = 1 << 22


@dataclass
class Bundle:
    """A loaded, verified bundle.

    Attributes:
        path: the bundle directory.
        manifest: the parsed ``manifest.json``.
        model: the main model, loaded.
        fallback: fallback models by name (``popular`` always; ``content`` when the data has item metadata).
        item_meta: item metadata aligned with ``model.items_`` (``item_id, title, year, genres, tags``).
        signature: ``{"signed", "scheme", "key_id"}``; ``signed`` is true only when the manifest's signature was
            verified against a configured key on load.
    """

    path: Path
    manifest: dict[str, Any]
    model: Recommender
    fallback: dict[str, Recommender]
    item_meta: pl.DataFrame
    signature: dict[str, Any] = field(default_factory=lambda: {"signed": False, "scheme": None, "key_id": None})

    @property
    def signed(self) -> bool:
        """Whether the manifest's signature was verified against a configured key."""
        return bool(self.signature.get("signed"))

    @property
    def name(self) -> str:
        """Model family (``als``, ``ease`` ...)."""
        return str(self.manifest["model"]["name"])

    @property
    def snapshot_id(self) -> str:
        """Snapshot id of the training data."""
        return str(self.manifest["data"]["snapshot_id"])

    @property
    def git_sha(self) -> str:
        """Git commit of the code that trained the model (``unknown`` outside a checkout)."""
        return str(self.manifest.get("git_sha", "unknown"))

    @property
    def created_at(self) -> str:
        """UTC ISO time the bundle was written."""
        return str(self.manifest["created_at"])


# ---------------------------------------------------------------------------------------------------- provenance
def git_sha(path: Path | None = None) -> str:
    """The git commit of the code at ``path`` (default: this package's source), or ``unknown``; never raises."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) >= 7 else "unknown"


def package_version() -> str:
    """Installed version of the ``tastebud`` package."""
    from tastebud import __version__

    return __version__


def utc_now() -> str:
    """Current UTC time, ISO 8601 with seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------- writing
def write_bundle(
    model: Recommender,
    directory: Path,
    *,
    train: Dataset,
    metrics: Mapping[str, float | None],
    fallback: dict[str, Recommender] | None = None,
    extra: dict[str, Any] | None = None,
    signer: Signer | None = None,
    share_min_bytes: int | None = SHARE_MIN_BYTES,
) -> Path:
    """Write a fitted model, its fallbacks and item metadata as a bundle directory, atomically.

    Args:
        model: the fitted main model.
        directory: where the bundle goes (replaced if it exists; built in a temporary sibling and renamed).
        train: the data the model was fitted on (snapshot id, sizes, split provenance, item metadata).
        metrics: validation metrics (name -> value; ``None`` for one that could not be computed) to record in the
            manifest.
        fallback: fitted fallback models by name; ``popular`` is required by serving.
        extra: more JSON-able provenance (how to rebuild the data, split parameters, timings).
        signer: signs the manifest (``signature.json``) when given
            (:func:`~tastebud.registry.signing.signer_from_settings`).
        share_min_bytes: arrays of at least this many bytes that several models hold byte for byte are stored
            once under ``shared/`` (``None``: never; every model keeps its own copy, schema version 1).

    Returns:
        The bundle directory.

    Raises:
        BundleError: a model is not fitted, has empty arrays or non-finite values, or metrics are not numbers.
    """
    fallback = dict(fallback or {})
    _check_fitted(model, "model")
    for name, fb in fallback.items():
        _check_fitted(fb, f"fallback {name!r}")
    clean_metrics = _check_metrics(metrics)
    directory = Path(directory)
    with atomic_dir(directory) as tmp:
        model.save(tmp / "model")
        _check_arrays(tmp / "model", f"model {model.name!r}")
        for name, fb in fallback.items():
            fb.save(tmp / "fallback" / name)
            _check_arrays(tmp / "fallback" / name, f"fallback {name!r}")
        _write_items(tmp / ITEMS_FILE, model, train)
        files = {_rel(p, tmp): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
        shared = {} if share_min_bytes is None else _share_duplicates(tmp, files, share_min_bytes)
        manifest = {
            "schema_version": SHARED_SCHEMA_VERSION if shared else BUNDLE_SCHEMA_VERSION,
            "model": {"name": model.name, "class": MODELS[model.name], "params": model.params()},
            "created_at": utc_now(),
            "package_version": package_version(),
            "git_sha": git_sha(),
            "data": {
                "name": train.name,
                "snapshot_id": train.snapshot_id,
                "n_users": train.n_users,
                "n_items": train.n_items,
                "n_interactions": train.n_interactions,
                # The full split parameters (method, fractions, seed) when the caller has them, else the part's tag.
                "split": _json_safe((extra or {}).get("split", train.meta.get("split", {}))),
            },
            "metrics": clean_metrics,
            "fallback": sorted(fallback),
            "files": files,
            **({"shared": shared} if shared else {}),
            "extra": _json_safe({k: v for k, v in (extra or {}).items() if k != "split"}),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        if signer is not None:
            signer.sign_bundle(tmp)
    return directory


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _share_duplicates(root: Path, files: dict[str, str], min_bytes: int) -> dict[str, str]:
    """Keep one copy of each model array that several parts of the bundle at ``root`` hold byte for byte.

    Every group of ``.npy`` files under ``model/`` and ``fallback/`` of at least ``min_bytes`` with one sha256 is
    replaced by ``shared/<sha256 prefix>.npy``; ``files`` (path -> sha256) is updated in place.

    Returns:
        Each replaced path -> its shared file, both relative to ``root``.
    """
    groups: dict[str, list[str]] = {}
    for rel, digest in files.items():
        in_model = rel.endswith(".npy") and rel.split("/", 1)[0] in ("model", "fallback")
        if in_model and (root / rel).stat().st_size >= min_bytes:
            groups.setdefault(digest, []).append(rel)
    links: dict[str, str] = {}
    for digest, rels in sorted(groups.items()):
        if len(rels) < 2:
            continue
        target = f"{SHARED_DIR}/{digest[:32]}.npy"
        (root / SHARED_DIR).mkdir(exist_ok=True)
        os.replace(root / rels[0], root / target)
        for rel in rels[1:]:
            (root / rel).unlink()
        for rel in rels:
            del files[rel]
            links[rel] = target
        files[target] = digest
    return dict(sorted(links.items()))


def shared_links(directory: Path, manifest: dict[str, Any]) -> dict[Path, Path]:
    """The manifest's ``shared`` field as absolute paths: model file -> the shared file holding its bytes.

    Raises:
        BundleError: the field is not a mapping of model paths to files under ``shared/`` listed in ``files``.
    """
    directory = Path(directory)
    raw = manifest.get("shared", {})
    where = directory / MANIFEST
    if not isinstance(raw, dict):
        raise BundleError(f"{where}: field 'shared' is not a mapping of model file to shared file")
    listed = manifest.get("files", {})
    links: dict[Path, Path] = {}
    for rel, target in raw.items():
        if not (isinstance(rel, str) and isinstance(target, str)):
            raise BundleError(f"{where}: field 'shared' maps {rel!r} to {target!r}; expected file paths")
        if rel.split("/", 1)[0] not in ("model", "fallback") or ".." in rel.split("/"):
            raise BundleError(f"{where}: shared entry {rel!r} is not a file of a model of the bundle")
        if not target.startswith(f"{SHARED_DIR}/") or ".." in target.split("/") or target not in listed:
            raise BundleError(
                f"{where}: shared entry {rel!r} points to {target!r}, which is not a file under {SHARED_DIR}/ "
                "listed in the manifest's files"
            )
        if rel in listed:
            raise BundleError(f"{where}: {rel!r} is both a file of the bundle and a link to {target!r}")
        links[directory / rel] = directory / target
    return links


def _check_fitted(model: Recommender, what: str) -> None:
    if not model.is_fitted:
        raise BundleError(f"refusing to bundle {what} ({model.name}): it is not fitted")
    assert model.users_ is not None and model.items_ is not None
    if len(model.items_) == 0 or len(model.users_) == 0:
        raise BundleError(
            f"refusing to bundle {what} ({model.name}): empty vocabulary "
            f"({len(model.users_)} users, {len(model.items_)} items)"
        )


def _map_array(path: Path) -> np.ndarray:
    """A ``.npy`` array memory-mapped read-only (no pickle), with a clear error naming the file."""
    try:
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError:  # some arrays cannot be mapped (an empty one on some platforms): read it whole
            return np.load(path, allow_pickle=False)
    except FileNotFoundError as err:
        raise BundleError(f"{path}: missing file") from err
    except (ValueError, OSError, EOFError) as err:
        raise BundleError(f"{path}: unreadable array ({err})") from err


def _count_nonfinite(arr: np.ndarray) -> int:
    flat = arr.reshape(-1, order="A")  # a view for C- or Fortran-ordered arrays
    return sum(int((~np.isfinite(flat[i : i + _BLOCK])).sum()) for i in range(0, flat.size, _BLOCK))


def _check_arrays(
    directory: Path,
    what: str,
    *,
    action: str = "bundle",
    root: Path | None = None,
    links: Mapping[Path, Path] | None = None,
) -> None:
    """Refuse empty models: no arrays, an empty or all-zero parameter matrix, or any NaN/inf value.

    Parameter matrices (float arrays of two or more dimensions: factors, weights) can never legitimately be
    empty or all zero after ``fit``; 1-D arrays (biases, the seen matrix's data) may be. Arrays are memory-mapped
    and scanned in blocks, so a large model is not held twice.

    Args:
        directory: a model's directory.
        what: the model named in the error.
        action: the verb of the error (``bundle``, ``load``, ``register``).
        root: files are named relative to it (default: by their name alone).
        links: the bundle's shared arrays (:func:`shared_links`); those of this model are checked too.
    """
    stored = [(path, path) for path in directory.rglob("*.npy")]
    linked = [(path, target) for path, target in (links or {}).items() if path.is_relative_to(directory)]
    arrays = sorted(stored + linked)
    total = 0
    for path, source in arrays:
        arr = _map_array(source)
        label = _rel(source, root) if root is not None else path.name
        total += arr.size
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        bad = _count_nonfinite(arr)
        if bad:
            raise BundleError(f"refusing to {action} {what}: {label} holds {bad} NaN/inf values")
        if arr.ndim >= 2 and arr.size == 0:
            raise BundleError(f"refusing to {action} {what}: {label} is empty (shape {arr.shape})")
        if arr.ndim >= 2 and not np.any(arr):
            raise BundleError(f"refusing to {action} {what}: {label} is all zeros (an empty model)")
    if not arrays or total == 0:
        raise BundleError(f"refusing to {action} {what}: it saved no non-empty arrays")


def check_model_arrays(directory: Path, manifest: dict[str, Any], *, action: str = "load") -> None:
    """Refuse a bundle whose model or fallbacks hold NaN/inf, or empty or all-zero parameter matrices.

    Raises:
        BundleError: naming the file (relative to the bundle) and the model.
    """
    directory = Path(directory)
    links = shared_links(directory, manifest)
    what = f"model {manifest['model'].get('name')!r} of {directory}"
    _check_arrays(directory / "model", what, action=action, root=directory, links=links)
    for fb in manifest.get("fallback", []):
        what = f"fallback {fb!r} of {directory}"
        _check_arrays(directory / "fallback" / fb, what, action=action, root=directory, links=links)


def _check_metrics(metrics: Mapping[str, float | None]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for key, value in metrics.items():
        if value is None:
            out[str(key)] = None
            continue
        try:
            number = float(value)
        except (TypeError, ValueError) as err:
            raise BundleError(f"metric {key!r} is not a number: {value!r}") from err
        out[str(key)] = number if np.isfinite(number) else None
    return out


def _write_items(path: Path, model: Recommender, train: Dataset) -> None:
    assert model.items_ is not None
    meta = train.item_meta
    ids = model.items_.to_list()
    if meta.height == len(ids) and meta["item_id"].to_list() == ids:
        aligned = meta
    else:
        aligned = pl.DataFrame({"item_id": ids}).join(meta, on="item_id", how="left", maintain_order="left")
    path.write_text(json.dumps(aligned.to_dicts(), ensure_ascii=False), encoding="utf-8")


def _json_safe(obj: Any) -> Any:
    """Round-trip through JSON so that only plain values (str/number/bool/list/dict/None) remain."""
    return json.loads(json.dumps(obj, default=str))


# ---------------------------------------------------------------------------------------------------- reading
def read_manifest(directory: Path) -> dict[str, Any]:
    """Parse ``manifest.json`` and check its schema version (no checksums, no signature).

    Raises:
        BundleError: the directory or manifest is missing, not JSON, or of another schema version.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory not found")
    return parse_manifest(directory, read_json(directory / MANIFEST))


def _manifest_bytes(directory: Path) -> bytes:
    path = directory / MANIFEST
    try:
        return path.read_bytes()
    except FileNotFoundError as err:
        raise BundleError(f"{path}: missing file") from err
    except OSError as err:
        raise BundleError(f"{path}: unreadable ({err})") from err


def parse_manifest(directory: Path, manifest: Any) -> dict[str, Any]:
    """Check a parsed manifest of ``directory``: a JSON object of this schema version with the required fields.

    Raises:
        BundleError: naming ``directory/manifest.json``.
    """
    if isinstance(manifest, bytes):
        try:
            manifest = json.loads(manifest.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise BundleError(f"{directory / MANIFEST}: not valid JSON ({err})") from err
    if not isinstance(manifest, dict):
        raise BundleError(f"{directory / MANIFEST}: expected a JSON object")
    version = manifest.get("schema_version")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        expected = " or ".join(str(v) for v in SUPPORTED_SCHEMA_VERSIONS)
        raise BundleError(f"{directory / MANIFEST}: schema_version {version!r} is not supported (expected {expected})")
    if manifest.get("shared") and version != SHARED_SCHEMA_VERSION:
        raise BundleError(
            f"{directory / MANIFEST}: field 'shared' needs schema_version {SHARED_SCHEMA_VERSION}, found {version!r}"
        )
    for key in ("model", "data", "files", "metrics", "created_at"):
        if key not in manifest:
            raise BundleError(f"{directory / MANIFEST}: missing field {key!r}")
    return manifest


def verify_bundle(directory: Path, *, verifier: Verifier | None = None) -> dict[str, Any]:
    """Check the manifest, its signature (when ``verifier`` has a key) and the sha256 of every file.

    Returns:
        The manifest.

    Raises:
        BundleError: naming the first file that is missing, unexpected, truncated or altered, or the signature
            problem (unsigned, wrong key, manifest changed after signing).
    """
    return check_bundle(directory, verifier=verifier)[0]


def check_bundle(directory: Path, *, verifier: Verifier | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`verify_bundle` that also returns the signature status (``{"signed", "scheme", "key_id"}``).

    The signature is checked over the very bytes that are parsed, before any checksum: a file altered and its
    checksum recomputed in the manifest fails here.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise BundleError(f"{directory}: bundle directory not found")
    raw = _manifest_bytes(directory)
    status: dict[str, Any] = {"signed": False, "scheme": None, "key_id": None}
    if verifier is not None and verifier.configured:
        status = verifier.check(directory, raw)
    manifest = parse_manifest(directory, raw)
    listed: dict[str, str] = manifest["files"]
    if not isinstance(listed, dict):
        raise BundleError(f"{directory / MANIFEST}: field 'files' is not a mapping of file to sha256")
    present = {_rel(p, directory) for p in directory.rglob("*") if p.is_file()} - {MANIFEST, SIGNATURE}
    missing = sorted(set(listed) - present)
    if missing:
        raise BundleError(f"{directory / missing[0]}: file listed in the manifest is missing")
    unexpected = sorted(present - set(listed))
    if unexpected:
        raise BundleError(f"{directory / unexpected[0]}: unexpected file, not listed in the manifest")
    for rel, expected in sorted(listed.items()):
        actual = sha256_file(directory / rel)
        if actual != expected:
            raise BundleError(
                f"{directory / rel}: sha256 mismatch (file truncated or altered; "
                f"expected {expected[:12]}..., got {actual[:12]}...)"
            )
    shared_links(directory, manifest)  # every link points to a shared file checked above
    return manifest, status


def _load_model(name: str, directory: Path, where: Path) -> Recommender:
    # Only classes from the MODELS table can be loaded, so a manifest cannot make us import arbitrary code.
    if name not in MODELS:
        raise BundleError(f"{where}: unknown model {name!r}; expected one of {', '.join(MODELS)}")
    try:
        return model_class(name).load(directory)
    except BundleError:
        raise
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BundleError(f"{directory}: cannot load {name} model ({err})") from err


def load_bundle(directory: Path, *, verify: bool = True, verifier: Verifier | None = None) -> Bundle:
    """Load a bundle: verify its signature (when ``verifier`` has a key) and every checksum unless ``verify`` is
    false, and refuse arrays holding NaN/inf (always).

    Raises:
        BundleError: the bundle is missing, corrupt, unsigned or mis-signed while a key is configured, holds
            non-finite values, or is of another schema version; the message names the file.
    """
    directory = Path(directory)
    if verify:
        manifest, signature = check_bundle(directory, verifier=verifier)
    else:
        manifest, signature = read_manifest(directory), {"signed": False, "scheme": None, "key_id": None}
    model_info = manifest["model"]
    if model_info.get("class") != MODELS.get(model_info.get("name")):
        raise BundleError(
            f"{directory / MANIFEST}: model class {model_info.get('class')!r} does not match "
            f"model {model_info.get('name')!r}"
        )
    check_model_arrays(directory, manifest, action="load")
    with linked_arrays(shared_links(directory, manifest)):
        model = _load_model(model_info["name"], directory / "model", directory / MANIFEST)
        fallback = {
            name: _load_model(name, directory / "fallback" / name, directory / MANIFEST)
            for name in manifest.get("fallback", [])
        }
    item_meta = _read_items(directory / ITEMS_FILE)
    return Bundle(
        path=directory, manifest=manifest, model=model, fallback=fallback, item_meta=item_meta, signature=signature
    )


def _read_items(path: Path) -> pl.DataFrame:
    rows = read_json(path)
    if not isinstance(rows, list):
        raise BundleError(f"{path}: expected a JSON list of items")
    schema: dict[str, pl.DataType | type[pl.DataType]] = {
        "item_id": pl.String,
        "title": pl.String,
        "year": pl.Int32,
        "genres": pl.List(pl.String),
        "tags": pl.List(pl.String),
    }
    try:
        frame = pl.DataFrame(rows, schema_overrides=schema, infer_schema_length=None) if rows else None
    except (pl.exceptions.PolarsError, TypeError, ValueError) as err:
        raise BundleError(f"{path}: malformed item metadata ({err})") from err
    if frame is None:
        return pl.DataFrame(schema=schema)
    return frame


def bundle_size(directory: Path) -> int:
    """Total bytes of the files of a bundle."""
    return sum(os.path.getsize(p) for p in Path(directory).rglob("*") if p.is_file())


__all__ = [
    "BUNDLE_SCHEMA_VERSION",
    "SHARED_SCHEMA_VERSION",
    "SUPPORTED_SCHEMA_VERSIONS",
    "Bundle",
    "check_bundle",
    "check_model_arrays",
    "git_sha",
    "load_bundle",
    "package_version",
    "parse_manifest",
    "read_manifest",
    "shared_links",
    "verify_bundle",
    "write_bundle",
]
