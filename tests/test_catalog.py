"""Catalog manifests: the bundled split, labels and every malformed-file error."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pytest_modelqa.catalog import (
    CatalogError,
    bundled_catalog,
    ids_sha256,
    load_catalog,
    normalise_label,
)

HEADER = "id,image,category,shoelace_colour,name,split\n"


def write_manifest(folder: Path, body: str, *, header: str = HEADER) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "manifest.csv"
    path.write_bytes((header + body).encode() if isinstance(body, str) else body)
    return path


def test_bundled_split_is_disjoint_and_stratified():
    catalog = bundled_catalog("footwear")
    splits = catalog.frame["split"].value_counts().to_dict()
    assert splits == {"train": 1874, "test": 520, "val": 209}
    frame = catalog.frame
    laced = frame[frame["shoelace_colour"] != "none"]
    for colour, group in laced.groupby("shoelace_colour"):
        share = (group["split"] == "test").mean()
        assert 0.1 <= share <= 0.34, colour
    train = set(frame.loc[frame["split"] == "train", "id"])
    test = set(frame.loc[frame["split"] == "test", "id"])
    assert not train & test


def test_bundled_images_exist():
    catalog = bundled_catalog("footwear")
    missing = [path for path in catalog.image_paths() if not path.is_file()]
    assert missing == []


def test_subset_and_where(tmp_path):
    path = write_manifest(
        tmp_path,
        "1,a.jpg,Casual Shoes,White,x,train\n2,b.jpg,Heels,none,y,test\n"
        "3,c.jpg,Casual Shoes,Black,z,test\n",
    )
    catalog = load_catalog(path)
    assert catalog.subset("test").ids == ["2", "3"]
    assert catalog.subset(["train", "test"]).ids == ["1", "2", "3"]
    assert catalog.subset("all") is catalog
    assert catalog.where("category", ["casual shoes"]).ids == ["1", "3"]
    assert catalog.labels("shoelace_colour") == ["white", "none", "black"]
    with pytest.raises(CatalogError, match="unknown split holdout; use one of train"):
        catalog.subset("holdout")
    with pytest.raises(CatalogError, match="has no column 'colour'; columns are id"):
        catalog.labels("colour")


def test_normalise_label():
    assert normalise_label("  Navy   Blue ") == "navy blue"
    assert normalise_label(None) == ""
    assert normalise_label(float("nan")) == ""


def test_ids_hash_ignores_order():
    assert ids_sha256(["2", "1"]) == ids_sha256(["1", "2"])
    assert ids_sha256(["1"]) != ids_sha256(["1", "2"])


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "1,a.jpg,Casual Shoes,white,Nike Men, Black Shoes,test\n",
            r"manifest\.csv:2: row has 7 fields, more than the header's 6; quote fields "
            r"that contain commas",
        ),
        (
            "1,a.jpg,Casual Shoes,white,Nike Men, Black Shoes,test\n"
            "2,b.jpg,Heels,none,ok,test\n"
            "3,c.jpg,Heels,none,Puma, Red,test\n4,d.jpg,Heels,none,test\n",
            r"manifest\.csv:2: row has 7 fields, more than the header's 6 "
            r"\(3 rows have the wrong width, at lines 2, 4, 5\); quote fields",
        ),
        (
            '1,a.jpg,Heels,none,"two\nlines",test\n2,b.jpg,Heels,none,x,y,test\n',
            r"manifest\.csv:4: row has 7 fields",
        ),
        (
            "1,a.jpg,Heels,none,x,test\n1,b.jpg,Heels,none,y,test\n",
            r"manifest\.csv:3: duplicate id '1' \(1 in all\); give each item a "
            r"unique id",
        ),
        (
            "1,a.jpg,Heels,none,x,test\n ,b.jpg,Heels,none,y,test\n",
            r"manifest\.csv:3: empty id; every row needs an id",
        ),
        (
            "1,,Heels,none,x,test\n2,,Heels,none,y,test\n",
            r"manifest\.csv:2: empty image \(2 rows have one, at lines 2, 3\)",
        ),
        (
            "1,../../etc/passwd,Heels,none,x,test\n",
            r"manifest\.csv:2: image path '\.\./\.\./etc/passwd' leaves the catalog "
            r"folder; give image paths relative",
        ),
        (
            "1,/etc/passwd,Heels,none,x,test\n2,C:\\x.jpg,Heels,none,y,test\n"
            "3,images\\..\\..\\x.jpg,Heels,none,z,test\n",
            r"image path '/etc/passwd' leaves the catalog folder \(3 rows do, at lines "
            r"2, 3, 4\)",
        ),
        ("1,a.jpg,Heels,none,x,holdout\n", r"unknown split value 'holdout'; use train"),
        (
            b"1,a.jpg,Heels,none,caf\xe9,test\n",
            r"manifest\.csv:2: not valid UTF-8 at byte \d+; re-save it",
        ),
    ],
    ids=[
        "unquoted comma",
        "several broken rows",
        "line after quoted newline",
        "duplicate id",
        "empty id",
        "empty image",
        "image outside",
        "absolute images",
        "unknown split",
        "invalid utf-8",
    ],
)
def test_malformed_manifests(tmp_path, body, message):
    if isinstance(body, bytes):
        path = write_manifest(tmp_path, HEADER.encode() + body)
    else:
        path = write_manifest(tmp_path, body)
    with pytest.raises(CatalogError, match=message):
        load_catalog(path)


def test_missing_column(tmp_path):
    path = write_manifest(tmp_path, "1,a.jpg\n", header="id,image\n")
    with pytest.raises(CatalogError, match="missing column category, split"):
        load_catalog(path)


def test_missing_and_empty_manifest(tmp_path):
    with pytest.raises(CatalogError, match="catalog manifest not found"):
        load_catalog(tmp_path / "nowhere")
    (tmp_path / "manifest.csv").write_text("")
    with pytest.raises(CatalogError, match="file is empty; a manifest needs a header"):
        load_catalog(tmp_path)


def test_repeated_header_column(tmp_path):
    path = write_manifest(
        tmp_path, "1,a.jpg,x,y,test\n", header="\nid,image,id,category,split\n"
    )
    with pytest.raises(
        CatalogError, match=r"manifest\.csv:2: column 'id' appears more than once"
    ):
        load_catalog(path)


def test_quoted_product_names_load(tmp_path):
    path = write_manifest(
        tmp_path,
        '1,a.jpg,Casual Shoes,white,"Nike Men, Black Shoes",test\n'
        '2,b.jpg,Heels,none,"Catwalk ""Gold"" Heels",train\n',
    )
    catalog = load_catalog(path)
    assert catalog.frame["name"].tolist() == [
        "Nike Men, Black Shoes",
        'Catwalk "Gold" Heels',
    ]


def test_bom_and_crlf_load(tmp_path):
    body = "1,a.jpg,Heels,none,x,test\r\n2,b.jpg,Heels,none,y,val\r\n"
    path = write_manifest(tmp_path, b"\xef\xbb\xbf" + (HEADER + body).encode())
    assert load_catalog(path).ids == ["1", "2"]


def _check_loaded(path: Path) -> None:
    """Load a manifest; it must give a valid Catalog or a CatalogError naming it."""
    try:
        catalog = load_catalog(path)
    except CatalogError as error:
        assert str(error).startswith(str(path)), str(error)
        return
    assert catalog.frame["id"].is_unique
    assert set(catalog.frame["split"]) <= {"train", "val", "test"}
    for column in ("id", "image", "category", "split"):
        assert column in catalog.frame.columns


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(raw=st.binary(max_size=300))
def test_fuzzed_bytes_give_catalog_or_error(tmp_path, raw):
    path = tmp_path / "manifest.csv"
    path.write_bytes(raw)
    _check_loaded(path)


junk = st.one_of(
    st.sampled_from(["", " ", "..", "/", "a,b", 'say "hi"', "two\nlines"]),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=10),
    st.text(alphabet=',"\n\r\\ab\x00', max_size=6),
)
plausible = {
    "id": st.integers(0, 10**6).map(str),
    "image": st.sampled_from(["images/a.jpg", "b.png"] * 20 + ["../c.jpg", "/d.jpg"]),
    "split": st.sampled_from(["train", "val", "test"] * 10 + ["holdout"]),
}


@st.composite
def manifests(draw) -> list[list[str]]:
    """Draw a header and rows; about half the tables are valid, the rest broken."""
    columns = ["id", "image", "category", "split", "name"]
    ragged, junky, extra, short = (draw(st.integers(0, 7)) == 0 for _ in range(4))
    header = draw(st.permutations(columns))[: 3 if short else 5]
    if extra:
        header.append(draw(st.sampled_from([*columns, ""])))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        width = len(header) + (draw(st.integers(-2, 1)) if ragged else 0)
        row = []
        for index in range(max(width, 0)):
            column = header[index] if index < len(header) else ""
            usual = plausible.get(column, st.text("abc XYZ-é", max_size=8))
            row.append(draw(st.one_of(usual, junk) if junky else usual))
        rows.append(row)
    return [header, *rows]


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(table=manifests(), quote=st.booleans())
def test_fuzzed_rows_give_catalog_or_error(tmp_path, table, quote):
    # Rows written by csv.writer are well-formed CSV; joined by bare commas they
    # break wherever a field contains a comma, quote or line break.
    buffer = io.StringIO()
    if quote:
        csv.writer(buffer).writerows(table)
    else:
        buffer.write("".join(",".join(row) + "\n" for row in table))
    path = tmp_path / "manifest.csv"
    path.write_text(buffer.getvalue(), encoding="utf-8", newline="")
    _check_loaded(path)
