"""Product catalogs: the manifest CSV, image paths, splits and label normalisation."""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePath, PureWindowsPath

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


# Rows named one by one in a manifest error; the rest are counted.
SHOWN_ROWS = 5


def _other_rows(numbers: list[int], what: str) -> str:
    """Return " (N rows WHAT, at lines ...)" for more than one row, else ""."""
    if len(numbers) < 2:
        return ""
    shown = ", ".join(str(number) for number in numbers[:SHOWN_ROWS])
    more = len(numbers) - SHOWN_ROWS
    shown += f" and {more} more" if more > 0 else ""
    return f" ({len(numbers)} rows {what}, at lines {shown})"


def _parse_csv(manifest: Path, raw: bytes) -> tuple[list[list[str]], list[int]]:
    """Decode and split the manifest; return its non-empty rows and their lines."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise CatalogError(
            f"{manifest}:{line}: not valid UTF-8 at byte {error.start}; re-save it "
            "as UTF-8"
        ) from error
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for row in reader:
            if row:
                rows.append(row)
                # line_num counts the lines read so far, so a quoted field that spans
                # lines still names the row's last line.
                lines.append(reader.line_num)
    except csv.Error as error:
        raise CatalogError(
            f"{manifest}:{reader.line_num}: invalid CSV ({error})"
        ) from error
    if not rows:
        raise CatalogError(f"{manifest}: file is empty; a manifest needs a header row")
    return rows, lines


def _read_rows(manifest: Path, raw: bytes) -> tuple[pd.DataFrame, list[int]]:
    """Parse the manifest strictly; return the items and the line of each.

    Column names must be unique and every row as wide as the header.
    """
    rows, lines = _parse_csv(manifest, raw)
    header, body, header_line, lines = rows[0], rows[1:], lines[0], lines[1:]
    repeated = sorted({name for name in header if header.count(name) > 1})
    if repeated:
        raise CatalogError(
            f"{manifest}:{header_line}: column {', '.join(map(repr, repeated))} "
            "appears more than once in the header; give each column a unique name"
        )
    wrong = [
        line for line, row in zip(lines, body, strict=True) if len(row) != len(header)
    ]
    if wrong:
        first = body[lines.index(wrong[0])]
        relation = "more" if len(first) > len(header) else "fewer"
        raise CatalogError(
            f"{manifest}:{wrong[0]}: row has {len(first)} fields, {relation} than the "
            f"header's {len(header)}{_other_rows(wrong, 'have the wrong width')}; "
            "quote fields that contain commas, such as product names"
        )
    return pd.DataFrame(body, columns=header, dtype=str), lines


def _check_values(manifest: Path, frame: pd.DataFrame, lines: list[int]) -> None:
    """Reject blank ids or image paths, and image paths that leave the catalog."""
    for column in ("id", "image"):
        blank = [lines[i] for i, value in enumerate(frame[column]) if not value.strip()]
        if blank:
            raise CatalogError(
                f"{manifest}:{blank[0]}: empty {column}"
                f"{_other_rows(blank, 'have one')}; every row needs an {column}"
            )
    outside = [
        (lines[i], image)
        for i, image in enumerate(frame["image"])
        if PurePath(image).is_absolute()
        or PureWindowsPath(image).is_absolute()
        or ".." in PurePath(image.replace("\\", "/")).parts
    ]
    if outside:
        line, image = outside[0]
        raise CatalogError(
            f"{manifest}:{line}: image path {image!r} leaves the catalog folder"
            f"{_other_rows([n for n, _ in outside], 'do')}; give image paths "
            "relative to the folder of manifest.csv, inside it"
        )


def load_catalog(path: str | Path, *, name: str | None = None) -> Catalog:
    """Read a catalog from its manifest CSV, or from a folder holding manifest.csv.

    Raises CatalogError naming the file, and the line where there is one. The
    manifest fails when it is missing, unreadable, not UTF-8 or malformed CSV. It
    also fails when it lacks a required column, repeats a column or an id, has an
    empty id or image path or an image path outside its folder, or names an unknown
    split.
    """
    path = Path(path)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    if not manifest.is_file():
        raise CatalogError(f"catalog manifest not found: {manifest}")
    try:
        raw = manifest.read_bytes()
    except OSError as error:
        raise CatalogError(f"{manifest}: cannot be read ({error})") from error
    frame, lines = _read_rows(manifest, raw)
    missing = [column for column in REQUIRED_COLUMNS if column not in frame.columns]
    if missing:
        raise CatalogError(
            f"{manifest}: missing column {', '.join(missing)}; "
            f"a manifest needs {', '.join(REQUIRED_COLUMNS)}"
        )
    _check_values(manifest, frame, lines)
    repeats = frame["id"].duplicated().to_numpy()
    if repeats.any():
        duplicated = frame["id"][repeats].unique().tolist()
        shown = ", ".join(map(repr, duplicated[:SHOWN_ROWS]))
        raise CatalogError(
            f"{manifest}:{lines[repeats.argmax()]}: duplicate id {shown} "
            f"({len(duplicated)} in all); give each item a unique id"
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
