"""Product catalogs: the manifest CSV, image paths, stored splits and label normalisation."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

MANIFEST_NAME = "manifest.csv"
REQUIRED_COLUMNS = ("id", "image", "category", "split")
SPLITS = ("train", "val", "test")
PACKAGE_ROOT = Path(__file__).resolve().parent
# The bundled catalogs live beside the package in a source checkout.
FIXTURES_DIR = PACKAGE_ROOT.parent / "fixtures"


class CatalogError(ValueError):
    """A manifest that cannot be read or does not describe a usable catalog."""


def normalise_label(value: object) -> str:
    """Return the comparison form of a label: trimmed, lower case, single spaces."""
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return ""
    return " ".join(str(value).split()).lower()


@dataclass(frozen=True)
class Catalog:
    """A table of catalog items whose image paths are resolved against `root`.

    `frame` holds one row per item with at least the columns id, image, category and
    split; ids are strings. Label columns keep their original spelling, and
    `labels(column)` gives the normalised form used for every comparison.
    """

    name: str
    root: Path
    frame: pd.DataFrame = field(repr=False)
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def ids(self) -> list[str]:
        return self.frame["id"].tolist()

    def image_paths(self) -> list[Path]:
        return [self.root / image for image in self.frame["image"]]

    def labels(self, column: str) -> list[str]:
        if column not in self.frame.columns:
            raise CatalogError(
                f"catalog {self.name!r} has no column {column!r}; "
                f"columns are {', '.join(self.frame.columns)}"
            )
        return [normalise_label(value) for value in self.frame[column]]

    def subset(self, splits: Iterable[str] | str | None) -> Catalog:
        """Return the items of the given splits; None or "all" keeps every item."""
        if splits is None or splits == "all":
            return self
        wanted = [splits] if isinstance(splits, str) else list(splits)
        unknown = sorted(set(wanted) - set(SPLITS))
        if unknown:
            raise CatalogError(
                f"unknown split {', '.join(unknown)}; use one of {', '.join(SPLITS)}"
                " or all"
            )
        frame = self.frame[self.frame["split"].isin(wanted)].reset_index(drop=True)
        label = "+".join(wanted)
        return Catalog(f"{self.name}[{label}]", self.root, frame, self.sha256)

    def where(self, column: str, keep: Iterable[str]) -> Catalog:
        """Return the items whose normalised `column` value is in `keep`."""
        allowed = {normalise_label(value) for value in keep}
        mask = [label in allowed for label in self.labels(column)]
        frame = self.frame[mask].reset_index(drop=True)
        return Catalog(self.name, self.root, frame, self.sha256)


def _read_rows(manifest: Path, raw: bytes) -> pd.DataFrame:
    """Parse the manifest strictly: UTF-8, and every row as wide as the header."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CatalogError(
            f"{manifest}:{line}: not valid UTF-8 at byte {error.start}; re-save it as UTF-8"
        ) from error
    try:
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except csv.Error as error:
        raise CatalogError(f"{manifest}: invalid CSV ({error})") from error
    if not rows:
        raise CatalogError(f"{manifest}: file is empty; a manifest needs a header row")
    header, body = rows[0], rows[1:]
    for number, row in enumerate(body, start=2):
        if row and len(row) != len(header):
            relation = "more" if len(row) > len(header) else "fewer"
            raise CatalogError(
                f"{manifest}:{number}: row has {len(row)} fields, {relation} than the "
                f"header's {len(header)}; quote fields that contain commas, such as "
                "product names"
            )
    return pd.DataFrame([row for row in body if row], columns=header, dtype=str)


def load_catalog(path: str | Path, *, name: str | None = None) -> Catalog:
    """Read a catalog from its manifest CSV, or from a folder holding manifest.csv.

    Raises CatalogError naming the file when it is missing, unreadable, lacks a
    required column, repeats an id or names an unknown split.
    """
    path = Path(path)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest.is_file():
        raise CatalogError(f"catalog manifest not found: {manifest}")
    raw = manifest.read_bytes()
    frame = _read_rows(manifest, raw)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise CatalogError(
            f"{manifest}: missing column {', '.join(missing)}; "
            f"a manifest needs {', '.join(REQUIRED_COLUMNS)}"
        )
    duplicated = frame["id"][frame["id"].duplicated()].unique().tolist()
    if duplicated:
        shown = ", ".join(duplicated[:5])
        raise CatalogError(
            f"{manifest}: duplicate id {shown} ({len(duplicated)} in all)"
        )
    bad_splits = sorted(set(frame["split"]) - set(SPLITS))
    if bad_splits:
        raise CatalogError(
            f"{manifest}: unknown split value {', '.join(map(repr, bad_splits))}; "
            f"use {', '.join(SPLITS)}"
        )
    return Catalog(
        name=name or manifest.parent.name,
        root=manifest.parent,
        frame=frame,
        sha256=hashlib.sha256(raw).hexdigest(),
    )


def bundled_catalog(name: str) -> Catalog:
    """Load one of the catalogs shipped under fixtures/ by folder name."""
    return load_catalog(FIXTURES_DIR / name, name=name)


def ids_sha256(ids: Iterable[str]) -> str:
    """Return a hash of a set of item ids, independent of their order."""
    digest = hashlib.sha256()
    for item_id in sorted(ids):
        digest.update(item_id.encode())
        digest.update(b"\n")
    return digest.hexdigest()
