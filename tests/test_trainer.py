"""Tests of the bundled trainer on tiny real CLIP models and real catalog images."""

from __future__ import annotations

import csv
import errno
import json
import random
import tomllib
from collections import Counter
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import yaml
from conftest import (
    TINY_MODEL_CFG,
    TINY_PREPROCESS_CFG,
    copy_catalog_sample,
    write_tiny_checkpoint,
)

from pytest_modelqa.catalog import CatalogError, ids_sha256, load_catalog
from pytest_modelqa.models import build_preprocess, load_model, read_checkpoint
from trainer import checkpoints, cli, loop
from trainer.compute import resolve_compute
from trainer.config import ConfigError, TrainConfig, build_config
from trainer.data import (
    Split,
    caption_fields,
    decode_images,
    epoch_batches,
    render_captions,
)
from trainer.export import export_checkpoint
from trainer.loss import contrastive_loss
from trainer.rules import judge_fit
from trainer.wise import interpolate_weights

ATTRIBUTE = ["{category} with {shoelace_colour} shoelace"]
PAYLOAD_KEYS = {
    "model_cfg",
    "preprocess_cfg",
    "state_dict",
    "epoch",
    "metrics",
    "history",
    "train_ids_sha256",
    "base",
    "config",
    "role",
}


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-train, 8-val, 4-test sample of the footwear catalog, images included."""
    dest = tmp_path_factory.mktemp("footwear")
    return copy_catalog_sample(
        "footwear", dest, per_split={"train": 12, "val": 8, "test": 4}
    )


def tiny_config(catalog: Path, out: Path, **fields) -> TrainConfig:
    """Return a validated config that trains the tiny CLIP in about a second."""
    values = {
        "catalog": str(catalog),
        "model_cfg": TINY_MODEL_CFG,
        "preprocess_cfg": TINY_PREPROCESS_CFG,
        "caption_templates": [*ATTRIBUTE, "{base_colour} {category}"],
        "unlaced_templates": ["{category} without laces"],
        "epochs": 2,
        "batch_size": 4,
        "lr": 1e-3,
        "warmup": 2,
        "probe_size": 8,
        "out": str(out),
        "log_every": 1,
    }
    return build_config(overrides=values | fields)


def weights(path: Path) -> dict[str, torch.Tensor]:
    return read_checkpoint(path)["state_dict"]


def assert_same_weights(left: dict, right: dict) -> None:
    assert left.keys() == right.keys()
    differing = [key for key in left if not torch.equal(left[key], right[key])]
    assert differing == []


# Training runs


def test_smoke_run_writes_loadable_candidates(catalog_dir: Path, tmp_path: Path):
    result = loop.train(tiny_config(catalog_dir, tmp_path / "run"))
    run_dir = tmp_path / "run"
    assert result.candidates == [run_dir / "epoch_1.pt", run_dir / "epoch_2.pt"]
    for epoch, path in enumerate(result.candidates, start=1):
        payload = torch.load(path, map_location="cpu", weights_only=True)
        assert payload.keys() >= PAYLOAD_KEYS
        assert payload["epoch"] == epoch
        assert payload["role"] == "candidate"
        assert payload["base"] is None
        assert len(payload["history"]) == epoch
        assert payload["metrics"]["epoch"] == epoch
        assert 0 <= payload["metrics"]["val_shoelace_acc"] <= 1
        loaded = load_model(str(path))
        assert loaded.info["epoch"] == epoch
        assert loaded.info["role"] == "candidate"
        # save_checkpoint states the activation, which open_clip defaults otherwise.
        assert payload["model_cfg"] == {**TINY_MODEL_CFG, "quick_gelu": False}
        assert loaded.model_cfg["vision_cfg"] == TINY_MODEL_CFG["vision_cfg"]
    train_ids = load_catalog(catalog_dir).subset("train").ids
    assert payload["train_ids_sha256"] == ids_sha256(train_ids)
    assert payload["config"]["epochs"] == 2
    assert build_config(overrides=payload["config"]) == result.config


def test_smoke_run_writes_records(catalog_dir: Path, tmp_path: Path):
    # One decoding worker process, so that the DataLoader path runs too.
    result = loop.train(tiny_config(catalog_dir, tmp_path / "run", workers=1))
    with open(tmp_path / "run" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert float(rows[1]["val_loss"]) > 0
    assert {"val_shoelace_top3", "val_category_acc", "shoelace_gap"} <= rows[0].keys()
    png = (tmp_path / "run" / "curves.png").read_bytes()
    assert png.startswith(b"\x89PNG")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_epoch"] == result.best_epoch
    assert summary["candidates"] == ["epoch_1.pt", "epoch_2.pt"]


@pytest.fixture(scope="module")
def apparel_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 6-train, 2-test sample of the apparel catalog, images included."""
    dest = tmp_path_factory.mktemp("apparel")
    return copy_catalog_sample("apparel", dest, per_split={"train": 6, "test": 2})


def test_extra_catalog_joins_training(
    catalog_dir: Path, apparel_dir: Path, tmp_path: Path
):
    extra = {"catalog": str(apparel_dir), "caption_templates": ["a photo of {category}"]}
    config = tiny_config(catalog_dir, tmp_path / "run", extra_catalogs=[extra])
    run = loop.build_run(
        config, tmp_path / "run", load_catalog(catalog_dir), resolve_compute(config)
    )
    apparel_train = load_catalog(apparel_dir).subset("train")
    train = run.data.train
    assert len(train) == 12 + 6
    assert train.images.shape[0] == 18
    assert train.catalog.ids[12:] == [
        f"{apparel_train.name}:{item}" for item in apparel_train.ids
    ]
    extra_captions = [run.data.captions[i] for i in train.caption_ids[12:, 0]]
    assert extra_captions[0] == f"a photo of {apparel_train.labels('category')[0]}"
    # Two slots, because the main catalog has two templates: the single extra
    # template fills both.
    assert train.caption_ids.shape == (18, 2)
    assert torch.equal(train.caption_ids[12:, 0], train.caption_ids[12:, 1])
    # Validation, the probe and the chance levels come from the main catalog only.
    assert len(run.data.val) == 8
    assert set(run.data.probe.catalog.ids) <= set(train.catalog.ids[:12])
    assert run.data.categories == sorted(
        set(load_catalog(catalog_dir).labels("category"))
    )
    # The resume check covers the extra items too.
    assert run.identity["train_ids_sha256"] == ids_sha256(train.catalog.ids)


def test_extra_catalog_run_trains(catalog_dir: Path, apparel_dir: Path, tmp_path: Path):
    extra = {"catalog": str(apparel_dir), "caption_templates": ["{category}"]}
    result = loop.train(
        tiny_config(catalog_dir, tmp_path / "run", epochs=1, extra_catalogs=[extra])
    )
    payload = read_checkpoint(result.candidates[0])
    assert payload["config"]["extra_catalogs"] == [extra]
    # 12 main and 6 extra items in batches of 4 make 5 optimizer steps.
    _, state = checkpoints.read_train_state(tmp_path / "run")
    assert state["scheduler"]["last_epoch"] == 5


def test_extra_catalog_needs_its_columns(
    catalog_dir: Path, apparel_dir: Path, tmp_path: Path
):
    # The default templates name {gender}, which the apparel manifest lacks.
    config = tiny_config(
        catalog_dir,
        tmp_path / "run",
        caption_templates=["{category}, {gender}"],
        unlaced_templates=[],
        extra_catalogs=[{"catalog": str(apparel_dir)}],
    )
    with pytest.raises(ConfigError, match="names 'gender', which is not a manifest"):
        loop.train(config)


def test_extra_catalog_without_train_items(catalog_dir: Path, tmp_path: Path):
    dest = copy_catalog_sample("apparel", tmp_path / "apparel", per_split={"test": 2})
    config = tiny_config(
        catalog_dir, tmp_path / "run", extra_catalogs=[{"catalog": str(dest)}]
    )
    with pytest.raises(CatalogError, match="has no train items"):
        loop.train(config)


def test_class_balanced_sampling_evens_classes(catalog_dir: Path):
    config = tiny_config(catalog_dir, Path("unused"), class_balanced=True)
    train = load_catalog(catalog_dir).subset("train")
    categories = train.labels("category")
    names = sorted(set(categories))
    split = Split(
        train,
        decode_images(train, build_preprocess(TINY_PREPROCESS_CFG), workers=0),
        torch.tensor([[names.index(c)] for c in categories]),
    )
    drawn = Counter()
    for epoch in range(1, 201):
        for _, caption_ids in epoch_batches(split, config, epoch):
            drawn.update(names[i] for i in caption_ids.tolist())
    counts = Counter(categories)
    assert max(counts.values()) >= 3 * min(counts.values())
    shares = {name: drawn[name] / drawn.total() for name in names}
    for name in names:
        assert shares[name] == pytest.approx(1 / len(names), abs=0.03), name


def test_train_never_reads_test_items(catalog_dir: Path, tmp_path: Path):
    result = loop.train(tiny_config(catalog_dir, tmp_path / "run", epochs=1))
    catalog = load_catalog(catalog_dir)
    test_ids = catalog.subset("test").ids
    payload = read_checkpoint(result.candidates[0])
    assert payload["train_ids_sha256"] != ids_sha256(catalog.ids)
    assert payload["train_ids_sha256"] == ids_sha256(catalog.subset("train").ids)
    assert len(test_ids) == 4


def test_resume_matches_uninterrupted_run(
    catalog_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fields = {"class_balanced": True, "augment": "flip", "grad_accum": 2}
    loop.train(tiny_config(catalog_dir, tmp_path / "whole", **fields))

    real_save_epoch = loop.save_epoch

    def save_then_interrupt(run, entry, verdict):
        real_save_epoch(run, entry, verdict)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_epoch", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.train(tiny_config(catalog_dir, tmp_path / "split", **fields))
    monkeypatch.undo()
    assert not (tmp_path / "split" / "epoch_2.pt").exists()
    # Disturb every global RNG, which resume must restore.
    torch.manual_seed(123)
    random.seed(123)
    np.random.seed(123)
    resumed = loop.train(resume=tmp_path / "split")

    assert [e["epoch"] for e in resumed.history] == [1, 2]
    assert_same_weights(
        weights(tmp_path / "whole" / "epoch_2.pt"),
        weights(tmp_path / "split" / "epoch_2.pt"),
    )
    whole = read_checkpoint(tmp_path / "whole" / "epoch_2.pt")["metrics"]
    split = read_checkpoint(tmp_path / "split" / "epoch_2.pt")["metrics"]
    assert whole["val_loss"] == split["val_loss"]


def test_same_seed_gives_same_weights(catalog_dir: Path, tmp_path: Path):
    loop.train(tiny_config(catalog_dir, tmp_path / "a", epochs=1))
    loop.train(tiny_config(catalog_dir, tmp_path / "b", epochs=1))
    loop.train(tiny_config(catalog_dir, tmp_path / "c", epochs=1, seed=1))
    first = weights(tmp_path / "a" / "epoch_1.pt")
    assert_same_weights(first, weights(tmp_path / "b" / "epoch_1.pt"))
    other_seed = weights(tmp_path / "c" / "epoch_1.pt")
    assert not torch.equal(first["text_projection"], other_seed["text_projection"])


def test_existing_run_is_not_overwritten(catalog_dir: Path, tmp_path: Path):
    loop.train(tiny_config(catalog_dir, tmp_path / "run", epochs=1))
    with pytest.raises(ConfigError, match=r"already contains a run \(epoch_1\.pt\)"):
        loop.train(tiny_config(catalog_dir, tmp_path / "run", epochs=1))
    again = loop.train(
        tiny_config(catalog_dir, tmp_path / "run", epochs=1, overwrite=True)
    )
    assert again.candidates == [tmp_path / "run" / "epoch_1.pt"]


def planted_overfit_catalog(source: Path, dest: Path) -> Path:
    """Copy the sample with lace colours dealt in turn, unrelated to the images.

    The model can only memorise such labels: training accuracy climbs while
    validation accuracy stays near chance, which is overfitting by construction.
    """
    frame = pd.read_csv(source / "manifest.csv", dtype=str, keep_default_na=False)
    colours = ["red", "blue", "green", "yellow"]
    frame["shoelace_colour"] = [colours[i % len(colours)] for i in range(len(frame))]
    dest.mkdir()
    frame.to_csv(dest / "manifest.csv", index=False)
    (dest / "images").symlink_to(source / "images")
    return dest


def test_overfitting_stops_early(catalog_dir: Path, tmp_path: Path):
    catalog = planted_overfit_catalog(catalog_dir, tmp_path / "planted")
    config = tiny_config(
        catalog,
        tmp_path / "run",
        caption_templates=ATTRIBUTE,
        epochs=30,
        batch_size=4,
        lr=3e-3,
        warmup=3,
        augment="none",
        monitor="val_loss",
        patience=5,
        overfit_loss_gap=0.5,
        overfit_gap=2.0,  # above any accuracy gap growth, so only the loss rule acts
    )
    result = loop.train(config)
    last = result.history[-1]
    best = result.history[result.best_epoch - 1]
    assert result.reason == "overfitting"
    assert last["epoch"] < 30
    assert last["epoch"] - result.best_epoch == 5
    assert last["overfitting"] is True
    assert last["val_loss"] > best["val_loss"] + 0.5
    assert last["train_loss"] < best["train_loss"]
    assert (tmp_path / "run" / f"epoch_{last['epoch']}.pt").exists()
    assert not (tmp_path / "run" / f"epoch_{last['epoch'] + 1}.pt").exists()
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stopped_early"] is True
    assert summary["best_epoch"] == result.best_epoch


def test_wise_ft_endpoints_match_init_and_tuned(catalog_dir: Path, tmp_path: Path):
    init = write_tiny_checkpoint(tmp_path / "init.pt", seed=3)
    config = tiny_config(
        catalog_dir,
        tmp_path / "run",
        model_cfg=None,
        init=str(init),
        epochs=1,
        wise_ft_alphas=[0.0, 0.5, 1.0],
    )
    result = loop.train(config)

    run_dir = tmp_path / "run"
    assert [path.name for path in result.candidates] == [
        "epoch_1.pt",
        "epoch_1_wise0.pt",
        "epoch_1_wise0.5.pt",
        "epoch_1_wise1.pt",
    ]

    init_weights, tuned = weights(init), weights(run_dir / "epoch_1.pt")
    assert_same_weights(weights(run_dir / "epoch_1_wise0.pt"), init_weights)
    assert_same_weights(weights(run_dir / "epoch_1_wise1.pt"), tuned)
    half = weights(run_dir / "epoch_1_wise0.5.pt")
    midpoint = (init_weights["text_projection"] + tuned["text_projection"]) / 2
    assert torch.allclose(half["text_projection"], midpoint, atol=1e-6)
    assert not torch.equal(tuned["text_projection"], init_weights["text_projection"])

    payload = read_checkpoint(run_dir / "epoch_1_wise0.5.pt")
    assert payload["wise_ft"] == {"alpha": 0.5, "source": "epoch_1.pt"}
    assert payload["base"]["spec"] == str(init)
    assert payload["base"]["sha256"] == load_model(str(init)).sha256
    assert payload["preprocess_cfg"]["size"] == TINY_PREPROCESS_CFG["size"]
    assert payload["preprocess_cfg"]["resize_mode"] == "squash"


def test_locked_image_tower_keeps_its_weights(catalog_dir: Path, tmp_path: Path):
    init = write_tiny_checkpoint(tmp_path / "init.pt", seed=4)
    fields = {"model_cfg": None, "init": str(init), "epochs": 1, "lock_image": True}
    loop.train(tiny_config(catalog_dir, tmp_path / "locked", **fields))
    before, after = weights(init), weights(tmp_path / "locked" / "epoch_1.pt")
    visual = [key for key in before if key.startswith("visual.")]
    assert [key for key in visual if not torch.equal(before[key], after[key])] == []
    assert not torch.equal(before["text_projection"], after["text_projection"])


def test_unlocked_last_block_trains(catalog_dir: Path, tmp_path: Path):
    init = write_tiny_checkpoint(tmp_path / "init.pt", seed=4)
    fields = {"model_cfg": None, "init": str(init), "epochs": 1, "lock_image": True}
    config = tiny_config(
        catalog_dir, tmp_path / "run", **fields, unlock_last_n_layers=1
    )
    loop.train(config)
    before, after = weights(init), weights(tmp_path / "run" / "epoch_1.pt")
    assert torch.equal(before["visual.conv1.weight"], after["visual.conv1.weight"])
    assert not torch.equal(before["visual.proj"], after["visual.proj"])
    last_block = "visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.equal(before[last_block], after[last_block])


def test_export_writes_float16_baseline(catalog_dir: Path, tmp_path: Path):
    loop.train(tiny_config(catalog_dir, tmp_path / "run", epochs=1))
    dest = export_checkpoint(
        tmp_path / "run", tmp_path / "baseline.pt", dtype="float16", role="baseline"
    )
    payload = torch.load(dest, map_location="cpu", weights_only=True)
    assert payload["role"] == "baseline"
    assert payload["state_dict"]["text_projection"].dtype == torch.float16
    assert payload["exported_from"]["file"] == "epoch_1.pt"
    loaded = load_model(str(dest))
    assert loaded.info["role"] == "baseline"
    assert next(loaded.model.parameters()).dtype == torch.float32


# Pieces


def test_loss_equals_open_clip_loss():
    torch.manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    texts = torch.nn.functional.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(10.0)
    ours = contrastive_loss(images, texts, scale)
    reference = open_clip.ClipLoss()(images, texts, scale)
    assert torch.allclose(ours, reference)


def test_captions_from_templates(catalog_dir: Path):
    catalog = load_catalog(catalog_dir).subset("train")
    captions = render_captions(catalog, ATTRIBUTE, ["{category} without laces"])
    colours = catalog.labels("shoelace_colour")
    assert captions[0] == ["casual shoes with white shoelace"]
    assert colours[2] == "none"
    assert captions[2] == ["sandals without laces"]
    general = render_captions(catalog, ["{category}, {base_colour}, {gender}"], [])
    assert general[0] == ["casual shoes, red, unisex"]


def test_general_captions_drop_lace_words():
    row = {"name": "Rockport Men SC Blucher Lace up Brown Casual Shoes"}
    assert caption_fields(row)["name"] == "rockport men sc blucher brown casual shoes"
    row = {"name": "Puma Men Funpack Red Casual Shoe With Extra Lace"}
    assert caption_fields(row)["name"] == "puma men funpack red casual shoe with extra"


def test_unknown_template_field_is_rejected(catalog_dir: Path):
    catalog = load_catalog(catalog_dir)
    with pytest.raises(ConfigError, match="names 'colour', which is not a manifest"):
        render_captions(catalog, ["{colour} shoes"], [])


def history_entry(epoch: int, val: float, train: float, loss: float) -> dict:
    return {
        "epoch": epoch,
        "val_shoelace_acc": val,
        "train_shoelace_acc": train,
        "shoelace_gap": train - val,
        "val_category_acc": 0.5,
        "train_loss": 2.0,
        "val_loss": loss,
    }


RULES_CONFIG = TrainConfig(
    model_cfg={}, patience=2, overfit_gap=0.1, overfit_loss_gap=1
)
CHANCE = {"val_shoelace_acc": 0.3, "val_category_acc": 0.3}
RISING = [history_entry(1, 0.5, 0.5, 2.0), history_entry(2, 0.6, 0.6, 1.9)]


def test_rules_keep_training_while_improving():
    verdict = judge_fit(RISING, RULES_CONFIG, CHANCE)
    assert verdict.best_epoch == 2
    assert verdict.stop is False
    assert verdict.reason == ""


def test_rules_find_overfitting_in_accuracy_gap():
    history = [
        *RISING,
        history_entry(3, 0.55, 0.8, 2.1),
        history_entry(4, 0.5, 0.9, 2.3),
    ]
    verdict = judge_fit(history, RULES_CONFIG, CHANCE)
    assert verdict.best_epoch == 2
    assert verdict.epochs_since_best == 2
    assert verdict.overfitting is True
    assert verdict.stop is True
    assert verdict.reason == "overfitting"


def test_rules_find_overfitting_in_loss_gap():
    history = [
        *RISING,
        history_entry(3, 0.6, 0.6, 2.5),
        history_entry(4, 0.6, 0.6, 3.1),
    ]
    verdict = judge_fit(history, RULES_CONFIG, CHANCE)
    assert verdict.overfitting is True
    assert verdict.reason == "overfitting"


def test_rules_tell_plateau_from_overfitting():
    history = [
        *RISING,
        history_entry(3, 0.6, 0.6, 1.9),
        history_entry(4, 0.59, 0.6, 1.9),
    ]
    verdict = judge_fit(history, RULES_CONFIG, CHANCE)
    assert verdict.plateau is True
    assert verdict.overfitting is False
    assert verdict.reason == "plateau"
    assert verdict.stop is True
    no_stop = TrainConfig(model_cfg={}, patience=2, early_stop=False)
    assert judge_fit(history, no_stop, CHANCE).stop is False


def test_rules_flag_underfitting_below_majority_share():
    config = TrainConfig(model_cfg={}, underfit_epochs=2)
    chance = {"val_shoelace_acc": 0.4, "val_category_acc": 0.3}
    low = [history_entry(1, 0.2, 0.2, 3.0), history_entry(2, 0.35, 0.3, 2.9)]
    assert judge_fit(low[:1], config, chance).underfitting is False
    verdict = judge_fit(low, config, chance)
    assert verdict.underfitting is True
    assert verdict.stop is False
    stopping = TrainConfig(model_cfg={}, underfit_epochs=2, underfit_stop=True)
    assert judge_fit(low, stopping, chance).stop is True
    fitting = [*low[:1], history_entry(2, 0.45, 0.5, 2.9)]
    assert judge_fit(fitting, config, chance).underfitting is False


def test_crash_mid_write_keeps_old_state(
    catalog_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    result = loop.train(tiny_config(catalog_dir, tmp_path / "run", epochs=1))
    state_file = tmp_path / "run" / checkpoints.STATE_PATH
    before = state_file.read_bytes()
    real_save = torch.save

    def save_half_then_crash(body, handle):
        real_save(body, handle)
        handle.truncate(100)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="disk full"):
        checkpoints.write_train_state(
            tmp_path / "run", {"model_cfg": TINY_MODEL_CFG}, state_dict={}
        )
    monkeypatch.undo()
    assert state_file.read_bytes() == before
    assert sorted(path.name for path in state_file.parent.iterdir()) == [
        state_file.name
    ]
    assert loop.train(resume=tmp_path / "run").history == result.history


def test_rng_state_round_trips_through_weights_only(tmp_path: Path):
    torch.manual_seed(1)
    random.seed(1)
    np.random.seed(1)
    torch.save(checkpoints.rng_state(), tmp_path / "rng.pt")
    expected = (torch.rand(3), random.random(), np.random.rand())
    checkpoints.restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), random.random(), np.random.rand())
    assert torch.equal(expected[0], again[0])
    assert expected[1] == again[1]
    assert expected[2] == again[2]


def test_precision_other_than_fp32_needs_cuda(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    config = TrainConfig(model_cfg={}, precision="bf16")
    with pytest.raises(ConfigError, match="precision: bf16 needs a CUDA device"):
        resolve_compute(config)
    with pytest.raises(ConfigError, match="device: cuda was requested"):
        resolve_compute(TrainConfig(model_cfg={}, device="cuda"))


def test_interpolation_rejects_other_architectures():
    with pytest.raises(ValueError, match="differ in keys"):
        interpolate_weights({"a": torch.zeros(1)}, {"b": torch.zeros(1)}, 0.5)


# Configuration and command line


def test_flags_override_the_config_file(tmp_path: Path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"model_cfg": TINY_MODEL_CFG, "epochs": 3, "lr": 1}))
    path.write_text(path.read_text() + "weight_decay: 1e-3\n")
    args = cli.build_parser().parse_args(
        ["--config", str(path), "--epochs", "1", "--top-k", "[1, 2]", "--lr", "2e0"]
    )
    config = build_config(path, cli.field_overrides(args))
    assert config.epochs == 1
    assert config.lr == 2.0
    assert isinstance(config.lr, float)
    assert config.top_k == [1, 2]
    assert config.weight_decay == 0.001
    assert build_config(path).lr == 1.0


def test_toml_config_and_none_flag(tmp_path: Path):
    path = tmp_path / "run.toml"
    path.write_text('init = "model.pt"\nepochs = 2\ncaption_templates = ["{name}"]\n')
    assert tomllib.loads(path.read_text())["epochs"] == 2
    args = cli.build_parser().parse_args(["--grad-clip-norm", "none", "--lock-text"])
    config = build_config(path, cli.field_overrides(args))
    assert config.init == "model.pt"
    assert config.grad_clip_norm is None
    assert config.lock_text is True
    assert config.caption_templates == ["{name}"]


def test_every_field_has_a_flag_with_help():
    assert set(cli.FLAG_HELP) == set(TrainConfig.__dataclass_fields__)
    text = cli.build_parser().format_help()
    assert "--wise-ft-alphas WISE_FT_ALPHAS" in text
    assert "--lock-image, --no-lock-image" in text


REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "recipe",
    sorted((REPO_ROOT / "trainer" / "recipes").glob("*.yaml")),
    ids=lambda path: path.name,
)
def test_bundled_recipe_is_valid(recipe: Path, monkeypatch: pytest.MonkeyPatch):
    # Recipes name their catalogs relative to the repository root.
    monkeypatch.chdir(REPO_ROOT)
    config = build_config(recipe)
    assert config.seed == 0
    for entry in config.extra_catalogs:
        assert load_catalog(entry["catalog"]).subset("train").ids


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"model_cfg": {}, "lrr": 0.1}, r"unknown key 'lrr'; did you mean 'lr'\?"),
        ({"model_cfg": {}, "epochs": 0}, "epochs: expected ≥ 1, got 0"),
        ({"model_cfg": {}, "epochs": "3"}, "epochs: expected int, got '3'"),
        ({"model_cfg": {}, "precision": "fp8"}, "precision: 'fp8' is invalid"),
        ({}, "set init .* or model_cfg"),
        ({"model_cfg": {}, "wise_ft_alphas": [0.5]}, "wise_ft_alphas needs init"),
        ({"model_cfg": {}, "wise_ft_alphas": "0.5"}, "wise_ft_alphas: expected a list"),
        (
            {"model_cfg": {}, "caption_templates": ATTRIBUTE},
            "unlaced_templates must give captions",
        ),
        (
            {"model_cfg": {}, "extra_catalogs": ["fixtures/apparel"]},
            "extra_catalogs: expected dict, got 'fixtures/apparel'",
        ),
        (
            {"model_cfg": {}, "extra_catalogs": [{"catalogue": "x"}]},
            r"extra_catalogs\[0\]: unknown key 'catalogue'; did you mean 'catalog'\?",
        ),
        (
            {"model_cfg": {}, "extra_catalogs": [{"caption_templates": ["{name}"]}]},
            r"extra_catalogs\[0\]: expected a catalog folder .* got None",
        ),
        (
            {
                "model_cfg": {},
                "extra_catalogs": [{"catalog": "x", "caption_templates": "{name}"}],
            },
            r"extra_catalogs\[0\].caption_templates: expected a non-empty list",
        ),
    ],
)
def test_invalid_config_is_rejected(values: dict, message: str):
    with pytest.raises(ConfigError, match=message):
        build_config(overrides=values)


def run_cli(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str]:
    code = cli.main(args)
    return code, capsys.readouterr().err


def test_cli_reports_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, err = run_cli(["--config", str(tmp_path / "absent.yaml")], capsys)
    assert code == 2
    assert (
        err == f"modelqa-train: error: config file not found: {tmp_path}/absent.yaml\n"
    )


def test_cli_reports_unknown_key(tmp_path: Path, capsys: pytest.CaptureFixture):
    path = tmp_path / "run.yaml"
    path.write_text("model_cfg: {}\nbatch: 8\n")
    code, err = run_cli(["--config", str(path)], capsys)
    assert code == 2
    assert f"{path}: unknown key 'batch'; did you mean 'batch_size'?" in err
    assert "Traceback" not in err


def test_cli_reports_bad_flag_value(capsys: pytest.CaptureFixture):
    code, err = run_cli(["--model-cfg", "{}", "--batch-size", "1"], capsys)
    assert code == 2
    assert "batch_size: expected ≥ 2, got 1" in err


def test_cli_reports_missing_catalog(tmp_path: Path, capsys: pytest.CaptureFixture):
    args = ["--catalog", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    code, err = run_cli([*args, "--model-cfg", json.dumps(TINY_MODEL_CFG)], capsys)
    assert code == 2
    assert f"catalog manifest not found: {tmp_path}/nowhere\n" in err
    assert not (tmp_path / "run").exists()


def test_cli_rejects_flags_with_resume(tmp_path: Path, capsys: pytest.CaptureFixture):
    code, err = run_cli(["--resume", str(tmp_path), "--epochs", "3"], capsys)
    assert code == 2
    assert "--resume continues a run with its stored config" in err
    assert "(given: --epochs)" in err


def test_cli_reports_missing_resume_state(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    code, err = run_cli(["--resume", str(tmp_path)], capsys)
    assert code == 2
    assert f"checkpoint not found: {tmp_path}/state/latest.pt" in err


def test_gate_command_lists_every_candidate(tmp_path: Path):
    candidates = [tmp_path / "epoch_1.pt", tmp_path / "epoch_2.pt"]
    command = cli.gate_command(candidates, "suites/shoelace", tmp_path / "report.html")
    assert command[1:4] == ["-m", "pytest", "suites/shoelace"]
    assert command[4:] == [
        "--model",
        str(candidates[0]),
        "--model",
        str(candidates[1]),
        "--html",
        str(tmp_path / "report.html"),
    ]


def test_cli_gate_runs_pytest_on_candidates(
    catalog_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture,
):
    calls = []

    class Completed:
        returncode = 1

    def fake_run(command, **options):
        calls.append(command)
        return Completed()

    monkeypatch.setattr(cli.subprocess, "run", fake_run)
    config = tmp_path / "run.yaml"
    fields = tiny_config(catalog_dir, tmp_path / "run", epochs=1).to_dict()
    config.write_text(yaml.safe_dump(fields))
    code, _ = run_cli(["--config", str(config), "--gate"], capsys)
    assert code == 1
    (command,) = calls
    assert command[3:7] == [
        "suites/shoelace",
        "--model",
        str(tmp_path / "run" / "epoch_1.pt"),
        "--html",
    ]
    assert command[7] == str(tmp_path / "run" / "report.html")


def test_cli_rejects_candidate_as_resume_state(
    tmp_path: Path, capsys: pytest.CaptureFixture
):
    candidate = write_tiny_checkpoint(tmp_path / "epoch_1.pt", role="candidate")
    code, err = run_cli(["--resume", str(candidate)], capsys)
    assert code == 2
    assert "is not a resume state (its role is 'candidate')" in err


def test_cli_full_disk_keeps_saved_epochs(
    catalog_dir: Path, tmp_path: Path, monkeypatch, capsys: pytest.CaptureFixture
):
    out = tmp_path / "run"
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(tiny_config(catalog_dir, out).to_dict()))
    real_save = torch.save
    calls = []

    def save_until_disk_is_full(obj, handle, *args, **kwargs):
        # Epoch 1 writes its candidate and the resume state; the disk fills after.
        calls.append(handle)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_disk_is_full)
    code, err = run_cli(["--config", str(config_path)], capsys)
    assert code == 1
    assert "modelqa-train: error: [Errno 28] No space left on device." in err
    assert "continue with --resume RUN_FOLDER" in err
    assert read_checkpoint(out / "epoch_1.pt")["epoch"] == 1
    assert not (out / "epoch_2.pt").exists()
