"""Catalog manifests: the bundled split, labels and every malformed-file error."""

from __future__ import annotations

from pathlib import Path

import pytest

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
            "1,a.jpg,Heels,none,x,test\n1,b.jpg,Heels,none,y,test\n",
            r"duplicate id 1 \(1 in all\)",
        ),
        ("1,a.jpg,Heels,none,x,holdout\n", r"unknown split value 'holdout'; use train"),
        (
            b"1,a.jpg,Heels,none,caf\xe9,test\n",
            r"manifest\.csv:2: not valid UTF-8 at byte \d+; re-save it",
        ),
    ],
    ids=["unquoted comma", "duplicate id", "unknown split", "invalid utf-8"],
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
