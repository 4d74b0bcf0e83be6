"""Training data: stored splits, captions from templates and cached image tensors."""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from pytest_modelqa.catalog import Catalog, CatalogError, load_catalog, normalise_label
from trainer.config import ConfigError, TrainConfig

logger = logging.getLogger(__name__)

# shoelace_colour values that mean the item has no laces.
LACELESS = ("", "none")
# Lace words in free-text product names ("Lace up", "Extra Lace"), removed so that
# general captions carry no shoelace words.
LACE_WORDS = re.compile(r"\b(?:shoe)?laces?(?:[- ]?ups?)?\b", re.IGNORECASE)


def is_laced(colour: str) -> bool:
    return normalise_label(colour) not in LACELESS


def caption_fields(row: dict[str, str]) -> dict[str, str]:
    """Return a manifest row's values as caption words: normalised, lace words cut."""
    fields = {key: normalise_label(value) for key, value in row.items()}
    fields["name"] = " ".join(LACE_WORDS.sub(" ", fields.get("name", "")).split())
    return fields


def render_captions(
    catalog: Catalog,
    templates: list[str],
    unlaced_templates: list[str],
    *,
    slots: int | None = None,
) -> list[list[str]]:
    """Return each item's captions, one per template slot.

    Laced items use `templates` and the others `unlaced_templates` (or `templates`
    when that is empty). Both lists are cycled to `slots` entries (default: the longer
    length), so every item has the same number of slots and slot 0 is always its
    first template.
    """
    unlaced_templates = unlaced_templates or templates
    slots = slots or max(len(templates), len(unlaced_templates))
    rows = catalog.frame.to_dict("records")
    laced = [is_laced(row.get("shoelace_colour", "")) for row in rows]
    captions = []
    for row, has_laces in zip(rows, laced, strict=True):
        chosen = templates if has_laces else unlaced_templates
        fields = caption_fields(row)
        captions.append(
            [_format(chosen[slot % len(chosen)], fields) for slot in range(slots)]
        )
    return captions


def _format(template: str, fields: dict[str, str]) -> str:
    try:
        return template.format(**fields)
    except KeyError as error:
        raise ConfigError(
            f"caption template {template!r} names {error.args[0]!r}, which is not a "
            f"manifest column; columns are {', '.join(fields)}"
        ) from error
    except (IndexError, ValueError) as error:
        raise ConfigError(
            f"caption template {template!r} is invalid ({error})"
        ) from error


@dataclass
class Split:
    """One split's items with their preprocessed images and caption ids."""

    catalog: Catalog
    images: torch.Tensor  # (N, 3, H, W), float32, after the eval preprocess
    caption_ids: torch.Tensor  # (N, S) index into TrainingData.tokens per slot

    def __len__(self) -> int:
        return len(self.catalog)

    def take(self, indices: list[int]) -> Split:
        frame = self.catalog.frame.iloc[indices].reset_index(drop=True)
        catalog = Catalog(
            self.catalog.name, self.catalog.root, frame, self.catalog.sha256
        )
        index = torch.tensor(indices, dtype=torch.long)
        return Split(catalog, self.images[index], self.caption_ids[index])


def concat_splits(name: str, parts: list[Split]) -> Split:
    """Join splits of different catalogs into one, with each image path resolved.

    Ids of every part after the first gain a "catalog name:" prefix so that they
    stay unique, and columns that a part lacks are blank in its rows.
    """
    frames = []
    for position, part in enumerate(parts):
        frame = part.catalog.frame.copy()
        frame["image"] = [str(path) for path in part.catalog.image_paths()]
        if position:
            frame["id"] = part.catalog.name + ":" + frame["id"]
        frames.append(frame)
    frame = pd.concat(frames, ignore_index=True).fillna("")
    first = parts[0].catalog
    return Split(
        Catalog(name, first.root, frame, first.sha256),
        torch.cat([part.images for part in parts]),
        torch.cat([part.caption_ids for part in parts]),
    )


@dataclass
class TrainingData:
    """Everything the loop and the validation read, built once per run."""

    catalog: Catalog
    train: Split  # the catalog's train split, then that of each extra catalog
    val: Split
    probe: Split  # fixed seeded sample of laced training items
    tokens: torch.Tensor  # (U, context_length) token ids of each distinct caption
    captions: list[str]  # the U distinct captions
    lace_values: list[str]  # laced shoelace colours of the whole catalog, sorted
    categories: list[str]  # categories of the whole catalog, sorted
    chance: dict[str, float]  # validation share of the most common class, per metric


def load_training_data(
    catalog: Catalog, config: TrainConfig, preprocess: Callable, tokenizer: Callable
) -> TrainingData:
    """Load the catalog's train and val splits with images, captions and tokens."""
    _check_catalog(catalog, config)
    extras = [_load_extra_catalog(entry, config) for entry in config.extra_catalogs]
    # Every split gets the same number of caption slots, and the least common
    # multiple keeps each catalog's templates equally likely.
    slots = math.lcm(
        len(config.caption_templates),
        len(config.unlaced_templates or config.caption_templates),
        *(len(templates) for _, templates in extras),
    )
    captions: dict[str, int] = {}  # caption text -> its row in TrainingData.tokens
    train, val = (
        _load_split(
            catalog.subset(name),
            (config.caption_templates, config.unlaced_templates),
            slots,
            config.workers,
            preprocess,
            captions,
        )
        for name in ("train", "val")
    )
    extra_parts = [
        _load_split(part, (templates, []), slots, config.workers, preprocess, captions)
        for part, templates in extras
    ]
    if extra_parts:
        names = "+".join(part.catalog.name for part in [train, *extra_parts])
        train = concat_splits(names, [train, *extra_parts])
    texts = list(captions)
    colours = catalog.labels("shoelace_colour")
    data = TrainingData(
        catalog=catalog,
        train=train,
        val=val,
        probe=_probe_sample(train, config.probe_size, config.seed),
        tokens=tokenizer(texts),
        captions=texts,
        lace_values=sorted({colour for colour in colours if is_laced(colour)}),
        categories=sorted(set(catalog.labels("category"))),
        chance=_chance_levels(val),
    )
    _check_monitor(config, data)
    logger.info(
        "data: %d train (%d from extra catalogs), %d val (%d laced), %d probe items, "
        "%d distinct captions",
        len(train),
        sum(len(part) for part in extra_parts),
        len(val),
        len(laced_indices(val)),
        len(data.probe),
        len(texts),
    )
    return data


def _check_catalog(catalog: Catalog, config: TrainConfig) -> None:
    if "shoelace_colour" not in catalog.frame.columns:
        raise CatalogError(f"catalog {catalog.name!r} has no shoelace_colour column")
    if config.class_balanced and config.balance_by not in catalog.frame.columns:
        raise ConfigError(
            f"balance_by: {config.balance_by!r} is not a column of catalog "
            f"{catalog.name!r}; columns are {', '.join(catalog.frame.columns)}"
        )
    counts = catalog.frame["split"].value_counts()
    train_count, val_count = counts.get("train", 0), counts.get("val", 0)
    if train_count < 2 or val_count < 1:
        raise CatalogError(
            f"catalog {catalog.name!r} has {train_count} train and {val_count} val "
            "items; training needs ≥ 2 train and ≥ 1 val"
        )


def _load_extra_catalog(entry: dict, config: TrainConfig) -> tuple[Catalog, list[str]]:
    """Return an extra catalog's train split and the caption templates it uses."""
    part = load_catalog(entry["catalog"]).subset("train")
    if not len(part):
        raise CatalogError(
            f"extra_catalogs: catalog {entry['catalog']} has no train items; "
            "give its manifest a split column with train rows"
        )
    if config.class_balanced and config.balance_by not in part.frame.columns:
        raise ConfigError(
            f"balance_by: {config.balance_by!r} is not a column of extra catalog "
            f"{entry['catalog']}; columns are {', '.join(part.frame.columns)}"
        )
    return part, entry.get("caption_templates") or config.caption_templates


def _load_split(
    part: Catalog,
    templates: tuple[list[str], list[str]],
    slots: int,
    workers: int,
    preprocess: Callable,
    captions: dict[str, int],
) -> Split:
    """Caption and decode one split, adding its new captions to `captions`.

    `templates` is (caption templates, unlaced templates).
    """
    per_item = render_captions(part, *templates, slots=slots)
    ids = [
        [captions.setdefault(text, len(captions)) for text in row] for row in per_item
    ]
    images = decode_images(part, preprocess, workers=workers)
    return Split(part, images, torch.tensor(ids, dtype=torch.long))


def laced_indices(split: Split) -> list[int]:
    colours = split.catalog.labels("shoelace_colour")
    return [index for index, colour in enumerate(colours) if is_laced(colour)]


def _probe_sample(train: Split, size: int, seed: int) -> Split:
    laced = laced_indices(train)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(laced), generator=generator)[:size]
    return train.take(sorted(laced[i] for i in order.tolist()))


def _chance_levels(val: Split) -> dict[str, float]:
    """Return the accuracy of always predicting the most common validation class."""
    chance = {}
    colours = [val.catalog.labels("shoelace_colour")[i] for i in laced_indices(val)]
    for metric, labels in (
        ("val_shoelace_acc", colours),
        ("val_category_acc", val.catalog.labels("category")),
    ):
        counts = Counter(labels)
        chance[metric] = max(counts.values()) / len(labels) if labels else 0.0
    return chance


def _check_monitor(config: TrainConfig, data: TrainingData) -> None:
    if laced_indices(data.val):
        return
    for name in ("monitor", "underfit_metric"):
        if getattr(config, name) == "val_shoelace_acc":
            raise ConfigError(
                f"{name}: the val split has no laced items, so val_shoelace_acc "
                "cannot be computed; use val_category_acc (or val_loss for monitor)"
            )


class _ImageFiles(torch.utils.data.Dataset):
    def __init__(self, paths: list[Path], preprocess: Callable) -> None:
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        with Image.open(self.paths[index]) as image:
            return self.preprocess(image.convert("RGB"))


def decode_images(
    catalog: Catalog, preprocess: Callable, *, workers: int
) -> torch.Tensor:
    """Decode a catalog's images once through the eval preprocess: (N, 3, H, W)."""
    paths = catalog.image_paths()
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise CatalogError(
            f"catalog {catalog.name!r}: image not found: {missing[0]} "
            f"({len(missing)} missing in all)"
        )
    loader = torch.utils.data.DataLoader(
        _ImageFiles(paths, preprocess), batch_size=64, num_workers=workers
    )
    # NOTE: the cache stores float32 tensors: about 50 kB an image at 64 px but 600 kB
    # at 224 px, so a 224 px model on a large catalog needs gigabytes of memory.
    return torch.cat(list(loader))


def epoch_batches(
    split: Split, config: TrainConfig, epoch: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images (B, 3, H, W), caption ids (B,)) micro-batches for one epoch.

    Order, caption slot and flips come from a generator seeded by (seed, epoch), so an
    epoch's batches are the same in a resumed run as in an uninterrupted one.
    """
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)
    count = len(split)
    if config.class_balanced:
        labels = split.catalog.labels(config.balance_by)
        sizes = Counter(labels)
        weights = torch.tensor([1.0 / sizes[label] for label in labels])
        order = torch.multinomial(weights, count, replacement=True, generator=generator)
    else:
        order = torch.randperm(count, generator=generator)
    slots = torch.randint(split.caption_ids.shape[1], (count,), generator=generator)
    flips = torch.rand(count, generator=generator) < 0.5
    for start in range(0, count, config.batch_size):
        index = order[start : start + config.batch_size]
        images = split.images[index]
        if config.augment == "flip":
            flip = flips[start : start + config.batch_size].view(-1, 1, 1, 1)
            images = torch.where(flip, images.flip(-1), images)
        yield images, split.caption_ids[index, slots[start : start + config.batch_size]]
