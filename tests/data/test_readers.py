"""Format readers on small files written by the tests: ids, values, timestamps and item metadata."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from tastebud.config import build_settings
from tastebud.data.dataset import Dataset
from tastebud.data.io import save_dataset
from tastebud.data.readers import FORMATS, available_datasets, detect_format, read_dataset
from tastebud.errors import DatasetNotFoundError, DataWarning, ParameterError

GENRES_100K = ["unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
               "Sci-Fi", "Thriller", "War", "Western"]  # fmt: skip


def _flags(*names: str) -> str:
    return "|".join("1" if g in names else "0" for g in GENRES_100K)


def _pairs(ds: Dataset) -> dict[tuple[str, str], tuple[float, float | None, int | None]]:
    frame = ds.to_frame()
    return {
        (r["user_id"], r["item_id"]): (r["value"], r["rating"], r["timestamp"]) for r in frame.iter_rows(named=True)
    }


def _meta(ds: Dataset, item_id: str) -> dict:
    return ds.item_meta.row(int(ds.item_index([item_id])[0]), named=True)


@pytest.fixture
def ml100k_dir(tmp_path: Path) -> Path:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "u.data").write_text("196\t242\t3\t881250949\n186\t302\t3\t891717742\n196\t302\t5\t881250950\n")
    genre_lines = "".join(f"{g}|{i}\n" for i, g in enumerate(GENRES_100K)) + "\n"
    (d / "u.genre").write_text(genre_lines, encoding="latin-1")
    items = [
        f"242|Kolya (1996)|24-Jan-1997||http://x|{_flags('Comedy')}",
        "302|L.A. Confidential (1997)|01-Jan-1997||http://y|" + _flags("Crime", "Film-Noir", "Mystery", "Thriller"),
        f"303|Misérables, Les|01-Jan-1995||http://z|{_flags('Drama', 'Musical')}",
        f"267|unknown|||http://w|{_flags('unknown')}",
    ]
    (d / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    (d / "u.user").write_text("196|49|M|writer|55105\n")
    return d


def test_ml100k_reads_ratings_titles_years_and_genre_flags(ml100k_dir: Path) -> None:
    ds = read_dataset(ml100k_dir)
    assert detect_format(ml100k_dir) == "ml-100k"
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 4, 3)  # catalog items join the vocabulary
    assert _pairs(ds)[("196", "302")] == (1.0, 5.0, 881250950)
    assert _meta(ds, "302") == {
        "item_id": "302",
        "title": "L.A. Confidential (1997)",
        "year": 1997,
        "genres": ["Crime", "Film-Noir", "Mystery", "Thriller"],
        "tags": [],
    }
    # latin-1 title decoded; year from the release date when the title has none
    assert _meta(ds, "303")["title"] == "Misérables, Les"
    assert _meta(ds, "303")["year"] == 1995
    assert _meta(ds, "267")["year"] is None
    assert ds.meta["format"] == "ml-100k"
    assert ds.meta["files"] == ["u.data", "u.item", "u.genre"]


def test_ml100k_without_u_genre_uses_the_standard_order(ml100k_dir: Path) -> None:
    (ml100k_dir / "u.genre").unlink()
    ds = read_dataset(ml100k_dir)
    assert _meta(ds, "242")["genres"] == ["Comedy"]


def test_ml1m_double_colon_files(tmp_path: Path) -> None:
    d = tmp_path / "ml-1m"
    d.mkdir()
    (d / "ratings.dat").write_text("1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n")
    (d / "movies.dat").write_bytes(
        "1193::One Flew Over the Cuckoo's Nest (1975)::Drama\n661::James and the Giant Peach (1996)::"
        "Animation|Children's|Musical\n2::Señor: A Story (1990)::Comedy\n".encode("latin-1")
    )
    ds = read_dataset(d)
    assert detect_format(d) == "ml-1m"
    assert ds.n_interactions == 3 and ds.n_users == 2
    assert _pairs(ds)[("1", "661")][1:] == (3.0, 978302109)
    assert _meta(ds, "661")["genres"] == ["Animation", "Children's", "Musical"]
    assert _meta(ds, "2") | {"genres": None} == {
        "item_id": "2", "title": "Señor: A Story (1990)", "year": 1990, "genres": None, "tags": [],
    }  # fmt: skip


def test_movielens_csv_with_quoted_titles_no_genres_and_tags(tmp_path: Path) -> None:
    d = tmp_path / "ml-latest-small"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n"
                                   "6,1,0.5,845553522\n")  # fmt: skip
    (d / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation|Children|Comedy|Fantasy\n"
        '3,"American President, The (1995)",Comedy|Drama|Romance\n'
        '9,"Babylon 5 (1994-1998) ",(no genres listed)\n'
        '11,"No Year, A Film",Drama\n'
    )
    (d / "tags.csv").write_text(
        'userId,movieId,tag,timestamp\n2,1,pixar,1445714994\n3,1,"fun, clever",1445714996\n'
        "4,1,pixar,1445714997\n2,3,politics,1445714998\n"
    )
    ds = read_dataset(d)
    assert detect_format(d) == detect_format(d / "ratings.csv") == "movielens-csv"
    assert (ds.n_users, ds.n_interactions) == (2, 3)
    assert _pairs(ds)[("1", "3")] == (1.0, 4.5, 964981247)
    toy = _meta(ds, "1")
    assert toy["title"] == "Toy Story (1995)" and toy["year"] == 1995
    assert toy["genres"] == ["Adventure", "Animation", "Children", "Comedy", "Fantasy"]
    assert toy["tags"] == ["fun, clever", "pixar"]  # unique and sorted
    assert _meta(ds, "3")["title"] == "American President, The (1995)"
    assert _meta(ds, "9")["genres"] == [] and _meta(ds, "9")["year"] == 1994
    assert _meta(ds, "11")["year"] is None and _meta(ds, "11")["tags"] == []
    assert ds.meta["files"] == ["ratings.csv", "movies.csv", "tags.csv"]


def test_movielens_csv_ratings_only(tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,10,3.0,1\n")
    ds = read_dataset(d / "ratings.csv")
    assert ds.n_items == 1 and ds.item_meta["title"].to_list() == [None]


def test_recbole_atomic_files(tmp_path: Path) -> None:
    d = tmp_path / "ml-100k"
    d.mkdir()
    (d / "ml-100k.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
    )
    (d / "ml-100k.item").write_text(
        "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        "242\tKolya\t1996\tComedy\n302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n"
        "267\tunkonwn\tunkonwn\tunknown\n"
    )
    (d / "ml-100k.user").write_text("user_id:token\tage:token\n196\t49\n")
    ds = read_dataset(d)
    assert detect_format(d) == detect_format(d / "ml-100k.inter") == "recbole"
    assert (ds.n_users, ds.n_items, ds.n_interactions) == (2, 3, 2)
    assert _pairs(ds)[("186", "302")] == (1.0, 3.0, 891717742)
    assert _meta(ds, "302")["genres"] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
    assert _meta(ds, "302")["title"] == "L.A. Confidential" and _meta(ds, "302")["year"] == 1997
    assert _meta(ds, "267")["year"] is None
    assert ds.name == "ml-100k"


@pytest.mark.integration
def test_recbole_reader_on_the_real_ml100k_copy(ml100k_recbole_dir: Path) -> None:
    source = ml100k_recbole_dir
    assert (source / "ml-100k.inter").is_file() and detect_format(source) == "recbole"
    ds = read_dataset(source)
    assert ds.meta["format"] == "recbole"
    assert (ds.n_interactions, ds.n_users, ds.n_items) == (100_000, 943, 1_682)
    assert ds.item_meta["title"].null_count() == 0
    assert (ds.item_meta["genres"].list.len() > 0).all()


def test_lastfm_tsv_mbid_or_name_and_summed_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "usersha1-artmbid-artname-plays.tsv"
    mbid = "a74b1b7f-71a5-4011-9441-d0b5e4122711"
    path.write_text(
        f"00000c289a1829a808ac09c00daf10bc3c4e223b\t{mbid}\tRadiohead\t100\n"
        "00000c289a1829a808ac09c00daf10bc3c4e223b\t\tdie Ärzte\t5\n"
        f"00000c289a1829a808ac09c00daf10bc3c4e223b\t{mbid}\tradiohead\t20\n"
        '11111c289a1829a808ac09c00daf10bc3c4e223b\t\t"Weird" Al\t7\n'
    )
    ds = read_dataset(path)
    assert detect_format(path) == detect_format(tmp_path) == "lastfm-360k"
    pairs = _pairs(ds)
    user = "00000c289a1829a808ac09c00daf10bc3c4e223b"
    assert pairs[(user, mbid)] == (120.0, None, None)  # two rows summed
    assert pairs[(user, "die Ärzte")][0] == 5.0  # no mbid: the name is the id
    assert _meta(ds, mbid)["title"] == "Radiohead"
    assert _meta(ds, '"Weird" Al')["title"] == '"Weird" Al'
    assert ds.n_interactions == 3 and not ds.has_ratings


def test_lastfm_rows_without_id_or_name_are_dropped_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "usersha1-artmbid-artname-plays.tsv"
    path.write_text("u1\t\tA\t1\nu1\t\t\t4\nu2\t\tB\t2\n")
    with pytest.warns(DataWarning, match="dropped 1 rows"):
        ds = read_dataset(path)
    assert ds.n_interactions == 2


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet"])
def test_generic_file_with_mapping(tmp_path: Path, suffix: str) -> None:
    frame = pl.DataFrame(
        {"uid": ["a", "b", "a"], "sku": ["x1", "x1", "x2"], "stars": [4.0, 2.5, 5.0],
         "when": [10, 20, 30], "name": ["X one", "X one", "X two"]}
    )  # fmt: skip
    path = tmp_path / f"shop{suffix}"
    if suffix == ".parquet":
        frame.write_parquet(path)
    else:
        frame.write_csv(path, separator="\t" if suffix == ".tsv" else ",")
    mapping = {"user_id": "uid", "item_id": "sku", "rating": "stars", "timestamp": "when", "title": "name"}
    ds = read_dataset(path, mapping=mapping)
    assert detect_format(path) == ("parquet" if suffix == ".parquet" else "csv")
    assert _pairs(ds) == {
        ("a", "x1"): (1.0, 4.0, 10),
        ("b", "x1"): (1.0, 2.5, 20),
        ("a", "x2"): (1.0, 5.0, 30),
    }
    assert _meta(ds, "x2")["title"] == "X two"
    assert ds.name == "shop" and ds.meta["mapping"] == mapping


def test_generic_csv_with_canonical_names_needs_no_mapping(tmp_path: Path) -> None:
    path = tmp_path / "events.csv"
    path.write_text("user_id,item_id,value\nu1,i1,3\nu2,i1,1\n")
    ds = read_dataset(path)
    assert _pairs(ds)[("u1", "i1")] == (3.0, None, None)


def test_saved_tastebud_directory(tmp_path: Path, ml100k_dir: Path) -> None:
    original = read_dataset(ml100k_dir)
    save_dataset(original, tmp_path / "saved")
    assert detect_format(tmp_path / "saved") == "tastebud"
    again = read_dataset(tmp_path / "saved")
    assert again.snapshot_id == original.snapshot_id


def test_read_by_name_resolves_through_the_data_dir(tmp_path: Path, ml100k_dir: Path) -> None:
    settings = build_settings(home=tmp_path / "home")
    target = settings.data_dir / "ml-100k"
    target.parent.mkdir(parents=True)
    ml100k_dir.rename(target)
    ds = read_dataset("ml-100k", settings=settings)
    assert ds.n_interactions == 3 and ds.name == "ml-100k"
    assert ds.meta["dataset"] == "ml-100k" and ds.meta["format"] == "ml-100k"
    assert "ml-100k" in available_datasets(settings)


def test_unknown_name_lists_available_datasets(tmp_path: Path) -> None:
    settings = build_settings(home=tmp_path)
    with pytest.raises(DatasetNotFoundError, match=r"available names: .*ml-100k"):
        read_dataset("no-such-dataset", settings=settings)


def test_known_but_unfetched_name_says_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="tastebud data fetch ml-1m"):
        read_dataset("ml-1m", settings=build_settings(home=tmp_path))


def test_missing_path_and_unknown_format(tmp_path: Path) -> None:
    with pytest.raises(DatasetNotFoundError, match="no such file"):
        read_dataset(tmp_path / "nothing" / "here.csv")
    path = tmp_path / "a.csv"
    path.write_text("user_id,item_id\n1,2\n")
    with pytest.raises(ParameterError, match="unknown dataset format"):
        read_dataset(path, format="excel")
    with pytest.raises(ParameterError, match="mapping"):
        read_dataset(tmp_path, format="ml-100k", mapping={"user_id": "u"})
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    with pytest.raises(DatasetNotFoundError, match="no known dataset files"):
        detect_format(empty_dir)


def test_every_format_has_a_reader() -> None:
    assert set(FORMATS) == {
        "ml-100k", "ml-1m", "movielens-csv", "recbole", "lastfm-360k", "csv", "parquet", "tastebud"
    }  # fmt: skip


def test_crlf_line_ends_and_utf8_bom(tmp_path: Path) -> None:
    d = tmp_path / "win"
    d.mkdir()
    (d / "ratings.csv").write_bytes(b"\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n1,2,3.5,100\r\n1,3,4,101\r\n")
    assert _pairs(read_dataset(d)) == {("1", "2"): (1.0, 3.5, 100), ("1", "3"): (1.0, 4.0, 101)}


def test_lastfm_equals_the_same_data_built_from_string_ids(tmp_path: Path) -> None:
    # the reader maps ids through categorical codes; the result must not differ from plain string ids
    path = tmp_path / "usersha1-artmbid-artname-plays.tsv"
    rows = [(f"user{u:02d}", f"mbid-{a:03d}" if a % 4 else "", f"Artist {a}", 1 + (u * a) % 50)
            for u in range(30) for a in range(0, 60, 1 + u % 5)]  # fmt: skip
    rows.append(rows[0])  # one repeated pair, summed
    path.write_text("".join(f"{u}\t{m}\t{n}\t{p}\n" for u, m, n, p in rows))
    frame = pl.DataFrame(rows, schema=["user_id", "mbid", "title", "value"], orient="row")
    frame = frame.with_columns(
        pl.when(pl.col("mbid") == "").then(pl.col("title")).otherwise(pl.col("mbid")).alias("item_id")
    )
    summed = frame.group_by("user_id", "item_id").agg(pl.col("value").sum())
    expected = Dataset.from_frame(summed, items=frame.select("item_id", "title").unique("item_id"))
    ds = read_dataset(path)
    assert ds.n_interactions == len(rows) - 1
    assert ds.users == expected.users and ds.items == expected.items
    assert ds.snapshot_id == expected.snapshot_id
