"""The Last.fm-360K-format music sample (``tastebud data synth --format lastfm-360k``) and the reader's tags file."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from tastebud.data.lastfm import LASTFM_FILE, LASTFM_TAGS_FILE
from tastebud.data.readers import detect_format, read_dataset
from tastebud.data.synthetic import MOOD_TAGS, STYLE_TAGS, synthetic_frames, write_lastfm_sample
from tastebud.errors import DataValidationError

SIZE = (600, 300, 12_000)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_lastfm_sample(tmp_path_factory.mktemp("lastfm") / "sample", *SIZE, seed=3)


def test_sample_has_the_release_layout(sample: Path) -> None:
    rows = (sample / LASTFM_FILE).read_text().splitlines()
    assert len(rows) == SIZE[2]
    fields = [r.split("\t") for r in rows]
    assert all(len(f) == 4 for f in fields)
    assert all(re.fullmatch(r"[0-9a-f]{40}", f[0]) for f in fields)  # user sha1
    assert all(f[1] == "" or re.fullmatch(r"[0-9a-f-]{36}", f[1]) for f in fields)  # mbid or empty
    assert any(f[1] == "" for f in fields)  # some artists lack an mbid, as in the release
    assert all(f[2] and int(f[3]) >= 1 for f in fields)
    assert detect_format(sample) == "lastfm-360k"
    # grouped by user, most played first
    users = [f[0] for f in fields]
    assert sum(a != b for a, b in itertools.pairwise(users)) == SIZE[0] - 1
    first_user = [int(f[3]) for f in fields if f[0] == users[0]]
    assert first_user == sorted(first_user, reverse=True)


def test_reader_loads_tags_as_tags_and_genres(sample: Path) -> None:
    ds = read_dataset(sample)
    assert (ds.n_users, ds.n_items, ds.n_interactions) == SIZE
    assert ds.meta["files"] == [LASTFM_FILE, LASTFM_TAGS_FILE]
    meta = ds.item_meta
    assert meta["title"].null_count() == 0 and meta["title"].n_unique() == SIZE[1]
    assert (meta["tags"].list.len() >= 2).all()
    assert meta["genres"].to_list() == meta["tags"].to_list()
    vocabulary = set(meta["tags"].explode().to_list())
    assert vocabulary <= set(MOOD_TAGS) | set(STYLE_TAGS)
    assert {"chill", "party", "sad", "energetic", "focus", "romantic"} <= vocabulary
    # artists without an mbid are named by their name, tags included
    nameless = meta.filter(pl.col("item_id") == pl.col("title"))
    assert nameless.height > 0 and (nameless["tags"].list.len() >= 2).all()


def test_first_tag_is_the_planted_cluster_and_listeners_stick_to_few_moods(sample: Path) -> None:
    ds = read_dataset(sample)
    first = ds.item_meta.select("item_id", pl.col("tags").list.first().alias("mood"))
    assert set(first["mood"].to_list()) == set(MOOD_TAGS[:8])  # 8 planted clusters, one mood each
    _, items = synthetic_frames(*SIZE, kind="implicit", seed=3)
    sizes = sorted(items["cluster"].value_counts()["count"].to_list())
    assert sorted(first["mood"].value_counts()["count"].to_list()) == sizes
    plays = ds.to_frame().join(first, on="item_id")
    share = (
        plays.group_by("user_id", "mood")
        .agg(pl.col("value").sum())
        .group_by("user_id")
        .agg((pl.col("value").max() / pl.col("value").sum()).alias("top"))
    )["top"].to_numpy()
    assert np.median(share) > 0.5  # 8 moods: about 0.125 if tags were unrelated to taste


def test_same_seed_same_files(tmp_path: Path, sample: Path) -> None:
    again = write_lastfm_sample(tmp_path / "again", *SIZE, seed=3)
    for name in (LASTFM_FILE, LASTFM_TAGS_FILE):
        assert (again / name).read_bytes() == (sample / name).read_bytes()
    other = write_lastfm_sample(tmp_path / "other", *SIZE, seed=4)
    assert (other / LASTFM_FILE).read_bytes() != (sample / LASTFM_FILE).read_bytes()


def test_hand_written_tags_file(tmp_path: Path) -> None:
    mbid = "a74b1b7f-71a5-4011-9441-d0b5e4122711"
    (tmp_path / LASTFM_FILE).write_text(f"u1\t{mbid}\tRadiohead\t10\nu1\t\tdie Ärzte\t3\nu2\t\tNobody\t1\n")
    (tmp_path / LASTFM_TAGS_FILE).write_text(
        f"{mbid}\tRadiohead\tsad\n{mbid}\tRadiohead\t alternative \n{mbid}\tRadiohead\tsad\n"
        "\tdie Ärzte\tpunk\n\tNot In The Plays\tparty\n"
    )
    ds = read_dataset(tmp_path)
    tags = dict(zip(ds.item_meta["item_id"].to_list(), ds.item_meta["tags"].to_list(), strict=True))
    assert tags == {mbid: ["sad", "alternative"], "die Ärzte": ["punk"], "Nobody": []}
    assert ds.n_items == 3  # an artist only the tags file names does not join the catalog
    assert ds.item_meta["genres"].to_list() == ds.item_meta["tags"].to_list()


def test_malformed_tags_file_names_the_file(tmp_path: Path) -> None:
    (tmp_path / LASTFM_FILE).write_text("u1\t\tA\t1\n")
    (tmp_path / LASTFM_TAGS_FILE).write_text("\tA\tchill\textra\n")
    with pytest.raises(DataValidationError, match=LASTFM_TAGS_FILE):
        read_dataset(tmp_path)
