"""Fetching public datasets: download from GroupLens, verify, and extract atomically into the data directory.

Each dataset lands in ``settings.data_dir / name`` together with ``source.json`` (where it came from, the
checksums of the archive and of every file, when). Extraction goes through a temporary directory that is
renamed into place, so a failed fetch never leaves a half-written dataset.

When GroupLens cannot be reached (or downloads are disabled), ML-100K has an offline route: the RecBole wheel
on PyPI carries a copy of it as RecBole atomic files. The wheel is downloaded with pip (never installed)
and the three files are read out of it with :mod:`zipfile`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from tastebud.config import Settings, get_settings
from tastebud.data.io import atomic_dir, atomic_write_text
from tastebud.errors import DatasetNotFoundError, FetchError

logger = logging.getLogger(__name__)

#: Where GroupLens publishes the MovieLens archives (``<base>/<name>.zip`` and ``<name>.zip.md5``).
GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
#: Provenance file written beside every fetched dataset.
SOURCE_FILE = "source.json"

_CHUNK = 1 << 20
_RECBOLE_MEMBERS = ("ml-100k.inter", "ml-100k.item", "ml-100k.user")


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset :func:`fetch_dataset` knows how to get."""

    name: str
    #: md5 of the GroupLens archive, or ``None`` for releases that change over time (checked against the
    #: ``.md5`` file GroupLens publishes beside the archive, fetched at download time).
    md5: str | None
    #: files whose presence means the dataset is in place (any one of the tuples).
    markers: tuple[tuple[str, ...], ...]
    description: str


#: Datasets that can be fetched by name.
DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "ml-100k",
            "0e33842e24a9c977be4e0107933c0723",
            (("u.data",), ("ml-100k.inter",)),
            "MovieLens 100K: 100,000 ratings of 1,682 movies by 943 users (1998)",
        ),
        DatasetInfo(
            "ml-1m",
            "c4d9eecfca2ab87c1945afe126590906",
            (("ratings.dat",),),
            "MovieLens 1M: 1,000,209 ratings of 3,706 movies by 6,040 users (2003)",
        ),
        DatasetInfo(
            "ml-latest-small",
            None,
            (("ratings.csv",),),
            "MovieLens latest small: about 100,000 ratings and tags (updated over time)",
        ),
        DatasetInfo(
            "ml-25m",
            "6b51fb2759a8657d3bfcbfc42b592ada",
            (("ratings.csv",),),
            "MovieLens 25M: 25,000,095 ratings of 62,423 movies by 162,541 users (2019)",
        ),
        DatasetInfo(
            "ml-32m",
            None,
            (("ratings.csv",),),
            "MovieLens 32M: 32,000,204 ratings of 87,585 movies by 200,948 users (2023)",
        ),
        DatasetInfo(
            "ml-latest",
            None,
            (("ratings.csv",),),
            "MovieLens latest full: about 33 million ratings (updated over time)",
        ),
    )
}


def _info(name: str) -> DatasetInfo:
    try:
        return DATASETS[name]
    except KeyError:
        raise DatasetNotFoundError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}") from None


def dataset_path(name: str, settings: Settings | None = None) -> Path:
    """Directory a fetched dataset lives in (whether or not it has been fetched yet)."""
    _info(name)
    return (settings or get_settings()).data_dir / name


def is_fetched(name: str, settings: Settings | None = None) -> bool:
    """Whether the dataset's files are in place (fetched, or put there by hand)."""
    info = _info(name)
    path = dataset_path(name, settings)
    return any(all((path / f).is_file() for f in files) for files in info.markers)


def read_source_info(directory: Path) -> dict[str, Any] | None:
    """The ``source.json`` of a fetched dataset directory, or ``None``."""
    path = Path(directory) / SOURCE_FILE
    if not path.is_file():
        return None
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) else None


class _Unreachable(Exception):
    """The server could not be reached (as opposed to serving something wrong)."""


def fetch_dataset(
    name: str,
    settings: Settings | None = None,
    *,
    force: bool = False,
    progress: bool = True,
    base_url: str | None = None,
) -> Path:
    """Download, verify and extract a dataset into ``settings.data_dir / name``.

    Args:
        name: one of :data:`DATASETS`.
        settings: home directory and download settings (default: :func:`get_settings`).
        force: fetch again even if the dataset is in place.
        progress: show a progress bar on stderr while downloading.
        base_url: where the archives are (default :data:`GROUPLENS_URL`).

    Returns:
        the dataset directory.

    Raises:
        DatasetNotFoundError: unknown name.
        FetchError: the download failed or did not match its checksum, and there is no offline route.
    """
    info = _info(name)
    settings = settings or get_settings()
    target = dataset_path(name, settings)
    if is_fetched(name, settings) and not force:
        return target
    url = f"{(base_url or GROUPLENS_URL).rstrip('/')}/{name}.zip"
    reason = "downloads are disabled (settings.data.allow_download is false)"
    if settings.data.allow_download:
        try:
            archive, md5 = _download_verified(url, settings, info, force=force, progress=progress)
        except _Unreachable as err:
            reason = str(err)
            logger.warning(
                "GroupLens unreachable (%s); trying the offline route",
                reason.split(": ")[-1],
                extra={"dataset": name, "url": url},
            )
        else:
            _extract_archive(archive, target, url=url, md5=md5)
            return target
    if name == "ml-100k":
        return _fetch_from_recbole_wheel(target, settings)
    raise FetchError(
        f"cannot download {name}: {reason}. Download {url} by hand, unzip it and put its files "
        f"({', '.join(info.markers[0])} and the others) in {target}"
    )


# ---------------------------------------------------------------------- download
def _download_verified(
    url: str, settings: Settings, info: DatasetInfo, *, force: bool, progress: bool
) -> tuple[Path, str]:
    """Download the archive (or reuse a verified cached copy) and check its md5."""
    timeout = settings.data.download_timeout_s
    expected = info.md5 or _published_md5(url, timeout)
    archive = settings.cache_dir / f"{info.name}.zip"
    if archive.is_file() and not force and _file_digest(archive, "md5") == expected:
        return archive, expected
    _download(url, archive, timeout=timeout, progress=progress)
    actual = _file_digest(archive, "md5")
    if actual != expected:
        archive.unlink(missing_ok=True)
        raise FetchError(
            f"{url}: checksum mismatch (md5 {actual}, expected {expected}); the download was deleted, "
            "try again or download it by hand"
        )
    return archive, expected


def _open(url: str, timeout: float) -> Any:
    try:
        return urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as err:
        raise FetchError(f"{url}: the server answered HTTP {err.code} {err.reason}") from err
    except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as err:
        raise _Unreachable(f"{url}: {getattr(err, 'reason', err)}") from err


def _published_md5(url: str, timeout: float) -> str:
    """The md5 GroupLens publishes in ``<archive>.md5`` (formats ``HASH  name`` or ``MD5 (name) = HASH``)."""
    with _open(f"{url}.md5", timeout) as response:
        text = response.read(4096).decode("ascii", errors="replace")
    match = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if match is None:
        raise FetchError(f"{url}.md5: no md5 checksum in the published checksum file")
    return match.group(1).lower()


def _download(url: str, dest: Path, *, timeout: float, progress: bool) -> None:
    from rich.console import Console
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    try:
        with _open(url, timeout) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with Progress(
                *Progress.get_default_columns(),
                DownloadColumn(),
                TransferSpeedColumn(),
                console=Console(stderr=True),
                disable=not progress,
                transient=True,
            ) as bar:
                task = bar.add_task(f"downloading {dest.name}", total=total)
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
        part.replace(dest)
    except (TimeoutError, ConnectionError) as err:
        raise _Unreachable(f"{url}: download interrupted ({err})") from err
    finally:
        part.unlink(missing_ok=True)


def _file_digest(path: Path, algorithm: str) -> str:
    digest = hashlib.new(algorithm)
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------- extraction
def _extract_archive(archive: Path, target: Path, *, url: str, md5: str) -> None:
    """Extract the archive's files (dropping its top folder) into ``target``, atomically."""
    try:
        with zipfile.ZipFile(archive) as zf, atomic_dir(target) as tmp:
            members = [m for m in zf.infolist() if not m.is_dir()]
            for member in members:
                rel = _safe_member_path(member.filename)
                if rel is None:
                    continue
                dest = tmp.joinpath(*rel.parts)
                dest.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(member) as src, dest.open("wb") as out:
                    shutil.copyfileobj(src, out, _CHUNK)
            _write_source(
                tmp,
                {
                    "route": "download",
                    "url": url,
                    "archive_md5": md5,
                    "archive_sha256": _file_digest(archive, "sha256"),
                },
            )
    except zipfile.BadZipFile as err:
        archive.unlink(missing_ok=True)
        raise FetchError(f"{archive}: not a valid zip archive ({err}); it was deleted, fetch again") from err


def _safe_member_path(name: str) -> PurePosixPath | None:
    """Path of an archive member below its top folder; ``None`` for entries that would escape the target."""
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or ".." in parts or parts[0].startswith("__MACOSX"):
        return None
    rel = parts[1:] if len(parts) > 1 else parts
    return PurePosixPath(*rel)


def _write_source(directory: Path, info: dict[str, Any]) -> None:
    files = {
        p.relative_to(directory).as_posix(): _file_digest(p, "sha256")
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != SOURCE_FILE
    }
    content = {**info, "files_sha256": files, "fetched_at": datetime.now(UTC).isoformat(timespec="seconds")}
    atomic_write_text(directory / SOURCE_FILE, json.dumps(content, indent=2, sort_keys=True))


# ---------------------------------------------------------------------- offline route (ML-100K)
def _fetch_from_recbole_wheel(target: Path, settings: Settings) -> Path:
    """Get ML-100K out of the RecBole wheel on PyPI (downloaded with pip, read as a zip, never installed)."""
    version = settings.data.recbole_version
    wheel = _recbole_wheel(settings.cache_dir, version, target)
    try:
        with zipfile.ZipFile(wheel) as zf, atomic_dir(target) as tmp:
            for member in _RECBOLE_MEMBERS:
                try:
                    data = zf.read(f"recbole/dataset_example/ml-100k/{member}")
                except KeyError as err:
                    raise FetchError(f"{wheel}: has no recbole/dataset_example/ml-100k/{member}") from err
                (tmp / member).write_bytes(data)
            _write_source(
                tmp,
                {
                    "route": "recbole-wheel",
                    "wheel": wheel.name,
                    "wheel_sha256": _file_digest(wheel, "sha256"),
                },
            )
    except zipfile.BadZipFile as err:
        wheel.unlink(missing_ok=True)
        raise FetchError(f"{wheel}: not a valid wheel ({err}); it was deleted, fetch again") from err
    logger.info("ml-100k extracted from %s", wheel.name, extra={"dataset": "ml-100k"})
    return target


def _recbole_wheel(cache: Path, version: str, target: Path) -> Path:
    pattern = f"recbole-{version}-*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-input",
        "--disable-pip-version-check",
        "--only-binary=:all:",
        f"recbole=={version}",
        "-d",
        str(cache),
    ]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise FetchError(f"cannot run pip to download the RecBole wheel ({err})") from err
    found = sorted(cache.glob(pattern))
    if result.returncode != 0 or not found:
        detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
        raise FetchError(
            f"GroupLens is unreachable and the offline copy of ml-100k (recbole=={version} from PyPI) "
            f"could not be downloaded either: {detail[0]}. Download {GROUPLENS_URL}/ml-100k.zip by hand "
            f"and unzip it into {target}"
        )
    return found[0]
