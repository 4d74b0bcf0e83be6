"""Trainer and gate across two processes, with gloo on the CPU, against one process.

Each two-rank run forks two workers from the test process, which join a gloo
process group through a FileStore in the test's folder, so no TCP store listens
anywhere and gloo's sockets bind to the loopback interface (GLOO_SOCKET_IFNAME=lo).
The workers then take the path that torchrun's processes take: trainer.cli.main,
or pytest.main with the plugin, with RANK, LOCAL_RANK and WORLD_SIZE set.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing
import torch.nn.functional as F
import yaml
from conftest import (
    TINY_MODEL_CFG,
    TINY_PREPROCESS_CFG,
    copy_catalog_sample,
    write_tiny_checkpoint,
)

from pytest_modelqa import distributed as gate_distributed
from pytest_modelqa import runner
from pytest_modelqa.catalog import load_catalog
from pytest_modelqa.embeddings import encode_images
from pytest_modelqa.models import load_model, read_checkpoint
from trainer import cli, loop
from trainer import distributed as train_distributed
from trainer.config import ConfigError, build_config
from trainer.loss import contrastive_loss

WORLD_SIZE = 2
# Two ranks sum gradients and losses in another order than one process, so weights
# drift apart by float32 rounding. Measured on this test's training run: 2.3e-6
# after its 6 AdamW steps, and 7.0e-3 when each rank contrasted its own shard only.
WEIGHT_ATOL = 1e-5
EMBEDDING_ATOL = 1e-6


def run_ranks(worker, folder: Path, *args) -> None:
    """Run worker(rank, *args) in WORLD_SIZE forked processes joined by gloo."""
    store = folder / f"store-{len(list(folder.glob('store-*')))}"
    torch.multiprocessing.start_processes(
        _join_then_run,
        args=(store, worker, args),
        nprocs=WORLD_SIZE,
        start_method="fork",
    )


def _join_then_run(rank: int, store: Path, worker, args) -> None:
    os.environ |= {
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(WORLD_SIZE),
        "GLOO_SOCKET_IFNAME": "lo",
    }
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{store}",
        rank=rank,
        world_size=WORLD_SIZE,
        # A broken collective fails the test in two minutes instead of hanging it.
        timeout=timedelta(seconds=120),
    )
    try:
        worker(rank, *args)
    finally:
        dist.destroy_process_group()


# The gathered loss


def batch_features() -> tuple[torch.Tensor, torch.Tensor]:
    """Return seeded L2-normalised image and text features of a batch of 5, (5, 8)."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(5, 8, generator=generator)
    texts = torch.randn(5, 8, generator=generator)
    return F.normalize(images, dim=1), F.normalize(texts, dim=1)


def _gathered_loss_worker(rank: int, out: Path) -> None:
    images, texts = batch_features()
    world = train_distributed.setup_world()
    start, stop = (0, 3) if rank == 0 else (3, 5)  # uneven shards, as tensor_split
    local_images = images[start:stop].clone().requires_grad_()
    local_texts = texts[start:stop].clone().requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    loss = train_distributed.contrastive_loss(local_images, local_texts, scale, world)
    loss.backward()
    torch.save(
        {
            "loss": loss.detach(),
            "image_grad": local_images.grad,
            "text_grad": local_texts.grad,
            "scale_grad": scale.grad,
        },
        out / f"loss-rank{rank}.pt",
    )


def test_gathered_loss_matches_one_process(tmp_path: Path):
    run_ranks(_gathered_loss_worker, tmp_path, tmp_path)
    ranks = [torch.load(tmp_path / f"loss-rank{r}.pt") for r in range(WORLD_SIZE)]

    images, texts = batch_features()
    images.requires_grad_()
    texts.requires_grad_()
    scale = torch.tensor(10.0, requires_grad=True)
    expected = contrastive_loss(images, texts, scale)
    expected.backward()

    for rank in ranks:
        assert rank["loss"].item() == pytest.approx(expected.item(), abs=1e-6)
    # Each rank's gradient is world size times its rows' share, which DDP's
    # averaging over the ranks brings back to the one-process gradient.
    image_grad = torch.cat([rank["image_grad"] for rank in ranks]) / WORLD_SIZE
    text_grad = torch.cat([rank["text_grad"] for rank in ranks]) / WORLD_SIZE
    torch.testing.assert_close(image_grad, images.grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(text_grad, texts.grad, atol=1e-6, rtol=1e-5)
    scale_grad = sum(rank["scale_grad"] for rank in ranks) / WORLD_SIZE
    torch.testing.assert_close(scale_grad, scale.grad, atol=1e-6, rtol=1e-5)


# The trainer


def _train_worker(rank: int, out: Path, commands: list[list[str]]) -> None:
    real_shard = train_distributed.shard_batches
    sizes: list[int] = []

    def recording_shard(batches, world):
        shards = real_shard(batches, world)
        sizes.extend(len(images) for images, _ in shards)
        return shards

    # loop.py calls distributed.shard_batches through the module, as patched here.
    train_distributed.shard_batches = recording_shard
    for command in commands:
        code = cli.main(command)
        assert code == 0, f"rank {rank}: modelqa-train {command} exited with {code}"
    (out / f"shards-rank{rank}.json").write_text(json.dumps(sizes))


@pytest.fixture(scope="module")
def train_catalog(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 12-train, 8-val sample of the footwear catalog, images included."""
    dest = tmp_path_factory.mktemp("footwear")
    return copy_catalog_sample("footwear", dest, per_split={"train": 12, "val": 8})


def tiny_fields(catalog: Path) -> dict:
    # batch_size 5 over 12 items makes batches of 5, 5 and 2, so the ranks' shards
    # are 3 and 2 items, then 1 and 1.
    return {
        "catalog": str(catalog),
        "model_cfg": TINY_MODEL_CFG,
        "preprocess_cfg": TINY_PREPROCESS_CFG,
        "caption_templates": ["{category} with {shoelace_colour} shoelace"],
        "unlaced_templates": ["{category} without laces"],
        "epochs": 2,
        "batch_size": 5,
        "lr": 1e-3,
        "warmup": 2,
        "probe_size": 8,
        "device": "cpu",
        "log_every": 1,
    }


def max_weight_difference(left: Path, right: Path) -> float:
    first, second = read_checkpoint(left), read_checkpoint(right)
    return max(
        (first["state_dict"][key] - second["state_dict"][key]).abs().max().item()
        for key in first["state_dict"]
    )


def test_two_rank_training_matches_one_process(
    train_catalog: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    fields = tiny_fields(train_catalog)
    loop.train(build_config(overrides=fields | {"out": str(tmp_path / "one")}))
    # A one-process run stopped after epoch 1, which two ranks resume below.
    real_save_epoch = loop.save_epoch

    def save_then_interrupt(run, entry, verdict):
        real_save_epoch(run, entry, verdict)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_epoch", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        loop.train(build_config(overrides=fields | {"out": str(tmp_path / "split")}))
    monkeypatch.undo()
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(yaml.safe_dump(fields | {"out": str(tmp_path / "two")}))

    commands = [["--config", str(config_file)], ["--resume", str(tmp_path / "split")]]
    run_ranks(_train_worker, tmp_path, tmp_path, commands)

    shards = [
        json.loads((tmp_path / f"shards-rank{r}.json").read_text()) for r in (0, 1)
    ]
    # Two epochs of the new run, then epoch 2 of the resumed one.
    assert shards[0] == [3, 3, 1] * 3
    assert shards[1] == [2, 2, 1] * 3
    one_process = tmp_path / "one" / "epoch_2.pt"
    two_ranks = tmp_path / "two" / "epoch_2.pt"
    resumed = tmp_path / "split" / "epoch_2.pt"
    assert max_weight_difference(one_process, two_ranks) < WEIGHT_ATOL
    assert max_weight_difference(one_process, resumed) < WEIGHT_ATOL
    one_history = read_checkpoint(one_process)["history"]
    two_history = read_checkpoint(two_ranks)["history"]
    for expected, actual in zip(one_history, two_history, strict=True):
        for key in ("train_loss", "val_loss", "lr"):
            assert actual[key] == pytest.approx(expected[key], rel=1e-5)
    assert sorted(path.name for path in (tmp_path / "two").iterdir()) == [
        "curves.png",
        "epoch_1.pt",
        "epoch_2.pt",
        "metrics.csv",
        "state",
        "summary.json",
    ]


def test_batch_smaller_than_world_is_rejected():
    world = train_distributed.World(rank=0, size=4)
    with pytest.raises(ConfigError, match="batch_size: 3 is below the 4 processes"):
        train_distributed.check_batch_size(3, 100, world)


def test_short_last_batch_is_skipped_with_warning(caplog: pytest.LogCaptureFixture):
    world = train_distributed.World(rank=1, size=4)
    with caplog.at_level(logging.WARNING, logger="trainer.distributed"):
        train_distributed.check_batch_size(8, 10, world)
    assert "the last batch of each epoch has 2 items" in caplog.text
    batches = [(torch.arange(8), torch.arange(8)), (torch.arange(2), torch.arange(2))]
    shards = train_distributed.shard_batches(batches, world)
    assert len(shards) == 1
    assert shards[0][0].tolist() == [2, 3]


def test_single_process_passes_batches_unchanged():
    batches = [(torch.arange(5), torch.arange(5)), (torch.arange(1), torch.arange(1))]
    shards = train_distributed.shard_batches(iter(batches), train_distributed.World())
    assert [images.tolist() for images, _ in shards] == [[0, 1, 2, 3, 4], [0]]


# The gate

GATE_SUITE = """\
name: mini
catalog: catalog
columns: {category: category, attribute: shoelace_colour}
attribute:
  prompt: "{category} with {value} shoelace"
  none_policy: exclude
classification:
  split: test
  top_k: 3
  checks:
    zero_shot_accuracy: {rule: better}
    rank_score: {rule: better}
retrieval:
  gallery_split: all
  min_matches: 2
  cases: cases/*.yaml
benchmarks:
  fmnist:
    catalog: fmnist
    prompt: "a photo of a {value}"
"""

GATE_CASES = """\
cases:
  - id: casual-white
    text: casual shoes with white shoelace
    category: Casual Shoes
    attribute: white
"""


@pytest.fixture(scope="module")
def gate_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A suite over 45 footwear and 15 Fashion-MNIST photos, and two tiny models."""
    root = tmp_path_factory.mktemp("gate")
    suite = root / "suite"
    copy_catalog_sample("footwear", suite / "catalog", per_split={"test": 45})
    copy_catalog_sample("fashion-mnist", suite / "fmnist", per_split={"test": 15})
    (suite / "modelqa-suite.yaml").write_text(GATE_SUITE)
    (suite / "cases").mkdir()
    (suite / "cases" / "text.yaml").write_text(GATE_CASES)
    write_tiny_checkpoint(root / "base.pt", seed=0)
    write_tiny_checkpoint(root / "other.pt", seed=1)
    return root


def gate_args(folder: Path) -> list[str]:
    # The tiny random models are at chance level, so the baseline check is off.
    return [
        str(folder / "suite"),
        "--model",
        str(folder / "other.pt"),
        "--modelqa-baseline",
        str(folder / "base.pt"),
        "-o",
        "modelqa_check_baseline=false",
        "-p",
        "no:cacheprovider",
        "--modelqa-json",
        "results.json",
        "--html",
        "report.html",
    ]


def _gate_worker(rank: int, folder: Path, out: Path) -> None:
    # Each rank works in a folder of its own, so any file a rank writes shows.
    workdir = out / f"rank{rank}"
    workdir.mkdir()
    os.chdir(workdir)
    encoded: list[int] = []
    real_encode = runner.encode_images

    def recording_encode(model, paths, **kwargs):
        encoded.append(len(paths))
        return real_encode(model, paths, **kwargs)

    gathered: dict[str, np.ndarray] = {}
    real_store = runner.ModelPool.store_image_embeddings

    def recording_store(pool, spec, catalog, embeddings):
        gathered[f"{Path(spec).stem}-{catalog.name}"] = embeddings
        real_store(pool, spec, catalog, embeddings)

    runner.encode_images = recording_encode
    runner.ModelPool.store_image_embeddings = recording_store
    # The forked worker inherits the test's captured stdout, so it prints to a file.
    with open(out / f"stdout-rank{rank}.txt", "w") as stdout:
        sys.stdout = stdout
        os.dup2(stdout.fileno(), 1)
        code = pytest.main(gate_args(folder))
        sys.stdout.flush()
    (out / f"encoded-rank{rank}.json").write_text(json.dumps(encoded))
    (out / f"code-rank{rank}.json").write_text(json.dumps(int(code)))
    np.savez(out / f"gathered-rank{rank}.npz", **gathered)


def test_two_rank_gate_matches_one_process(
    gate_folder: Path, tmp_path: Path, pytester: pytest.Pytester
):
    run_ranks(_gate_worker, tmp_path, gate_folder, tmp_path)
    one_process = pytester.runpytest_inprocess(*gate_args(gate_folder))

    codes = [json.loads((tmp_path / f"code-rank{r}.json").read_text()) for r in (0, 1)]
    assert codes == [one_process.ret, pytest.ExitCode.OK]
    # Only rank 0 prints, writes files, and runs the items.
    assert sorted(path.name for path in (tmp_path / "rank0").iterdir()) == [
        "assets",
        "report.html",
        "results.json",
    ]
    assert list((tmp_path / "rank1").iterdir()) == []
    assert "modelqa verdicts" in (tmp_path / "stdout-rank0.txt").read_text()
    assert (tmp_path / "stdout-rank1.txt").read_text() == ""
    # Each rank encodes its half of each catalog (45 and 15 images) once per model,
    # and rank 0 encodes nothing again after gathering.
    encoded = [
        json.loads((tmp_path / f"encoded-rank{r}.json").read_text()) for r in (0, 1)
    ]
    assert encoded == [[23, 8, 23, 8], [22, 7, 22, 7]]

    gathered = np.load(tmp_path / "gathered-rank0.npz")
    assert sorted(gathered.files) == [
        "base-catalog",
        "base-fmnist",
        "other-catalog",
        "other-fmnist",
    ]
    for name in gathered.files:
        model_stem, catalog_name = name.split("-")
        model = load_model(str(gate_folder / f"{model_stem}.pt"))
        catalog = load_catalog(gate_folder / "suite" / catalog_name)
        expected = encode_images(model, catalog.image_paths(), progress=False)
        np.testing.assert_allclose(
            gathered[name], expected, atol=EMBEDDING_ATOL, rtol=0
        )

    one_verdicts = json.loads((pytester.path / "results.json").read_text())["verdicts"]
    two_verdicts = json.loads((tmp_path / "rank0" / "results.json").read_text())[
        "verdicts"
    ]
    assert [(v["check"], v["passed"]) for v in two_verdicts] == [
        (v["check"], v["passed"]) for v in one_verdicts
    ]
    for expected, actual in zip(one_verdicts, two_verdicts, strict=True):
        assert actual["observed"] == pytest.approx(expected["observed"], abs=1e-6)
        assert actual["baseline"] == pytest.approx(expected["baseline"], abs=1e-6)


def test_numbered_cuda_device_is_rejected_under_torchrun():
    world = gate_distributed.World(rank=1, size=2, local_rank=1)
    with pytest.raises(pytest.UsageError, match=r"pass --modelqa-device cuda$"):
        gate_distributed.rank_device("cuda:1", world)
    assert gate_distributed.rank_device("cpu", world) == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a node without CUDA")
def test_cuda_without_devices_is_rejected_under_torchrun():
    world = gate_distributed.World(rank=0, size=2)
    with pytest.raises(pytest.UsageError, match="no CUDA device is available"):
        gate_distributed.rank_device("cuda", world)


def test_shards_cover_catalog_in_order():
    bounds = [
        gate_distributed.shard_bounds(10, gate_distributed.World(rank=r, size=3))
        for r in range(3)
    ]
    assert bounds == [(0, 4), (4, 7), (7, 10)]
