"""The gate under torchrun: every rank encodes a shard, and rank 0 alone runs items.

`torchrun --nproc-per-node N -m pytest SUITE --model CKPT` starts N pytest processes.
Each collects the same items. Before the items run, every rank loads each model the
selected items need and encodes one contiguous shard of each catalog's images. Rank 0
gathers the shards in catalog order and keeps them in its ModelPool, then runs the
items, prints the summary and writes the report and JSON alone. The other ranks print
nothing, write no files and exit with code 0 once their shards are sent.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
import torch.distributed as dist

from pytest_modelqa.catalog import Catalog
from pytest_modelqa.embeddings import ImageLoadError
from pytest_modelqa.items import SuiteFile
from pytest_modelqa.models import ModelLoadError
from pytest_modelqa.runner import ModelPool
from pytest_modelqa.state import GateState, state_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's rank among the gate's processes, and their count."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank on this node, which picks the CUDA device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise pytest.UsageError(
            f"environment variable {name}: expected an integer, got {value!r}; "
            "start several gate processes with torchrun, which sets it"
        ) from None


def world_from_env() -> World:
    """Return the World that torchrun's RANK, WORLD_SIZE and LOCAL_RANK describe."""
    return World(
        rank=_env_int("RANK", 0),
        size=_env_int("WORLD_SIZE", 1),
        local_rank=_env_int("LOCAL_RANK", 0),
    )


def rank_device(device: str, world: World) -> str:
    """Return this rank's device: cuda:LOCAL_RANK for --modelqa-device cuda.

    Raises pytest.UsageError for a numbered CUDA device, which would put every rank
    on one GPU, and for CUDA requested where this node has too few devices.
    """
    if not device.startswith("cuda"):
        return device
    if device != "cuda":
        raise pytest.UsageError(
            f"--modelqa-device {device}: under torchrun each rank encodes on "
            "cuda:LOCAL_RANK, so pass --modelqa-device cuda"
        )
    import torch

    count = torch.cuda.device_count()
    if count == 0:
        raise pytest.UsageError(
            "--modelqa-device cuda: no CUDA device is available on this node; pass "
            "--modelqa-device cpu"
        )
    if world.local_rank >= count:
        raise pytest.UsageError(
            f"--modelqa-device cuda: LOCAL_RANK is {world.local_rank} but this node "
            f"has {count} CUDA devices; start at most {count} processes per node "
            "(torchrun --nproc-per-node), or pass --modelqa-device cpu"
        )
    return f"cuda:{world.local_rank}"


def configure(config: pytest.Config) -> None:
    """Set this process up as one rank of a torchrun gate, when WORLD_SIZE > 1.

    Runs from pytest_cmdline_main, before any plugin's pytest_configure reads the
    options that decide which files it writes.
    """
    world = world_from_env()
    if world.size <= 1:
        return
    config.option.modelqa_device = rank_device(config.option.modelqa_device, world)
    if not world.is_main:
        # pytest's cache provider and junitxml, pytest-html and this plugin's JSON
        # writer skip their files in a process that has workerinput, as they do in
        # a pytest-xdist worker.
        config.workerinput = {
            "workerid": f"rank{world.rank}",
            "workercount": world.size,
        }
        # With no terminal reporter the rank prints nothing, and pytest still writes
        # an internal error to stderr.
        config.pluginmanager.set_blocked("terminalreporter")
    config.pluginmanager.register(GateRank(world), "modelqa-distributed")


@contextlib.contextmanager
def process_group(world: World) -> Iterator[None]:
    """Join the torchrun process group for the duration.

    The gate's collectives carry CPU objects (numpy embeddings), so gloo serves CPU
    and CUDA encoding alike.
    """
    if dist.is_initialized():
        yield
        return
    dist.init_process_group("gloo", rank=world.rank, world_size=world.size)
    try:
        yield
    finally:
        dist.destroy_process_group()


class GateRank:
    """Hooks of one rank: encode the shards, then let rank 0 alone run the items."""

    def __init__(self, world: World):
        self.world = world

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        config = session.config
        stopping = (
            session.testsfailed and not config.option.continue_on_collection_errors
        )
        state = config.stash.get(state_key, None)
        # Every rank collects the same items, so all of them skip or enter this.
        if state is not None and not config.option.collectonly and not stopping:
            if not self.world.is_main:
                state.pool.options.progress = False
            with process_group(self.world):
                encode_in_shards(state.pool, encoding_plan(session, state), self.world)
        # Returning True ends pytest's test loop, so no item runs on this rank.
        return None if self.world.is_main else True

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus) -> None:
        # Rank 0 reports collection errors and empty selections. Another rank exits
        # non-zero only when it fails itself (an internal error, an interrupt),
        # because torchrun then stops every rank.
        quiet = (pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED)
        if not self.world.is_main and exitstatus in quiet:
            session.exitstatus = pytest.ExitCode.OK


def encoding_plan(
    session: pytest.Session, state: GateState
) -> list[tuple[str, Catalog]]:
    """Return the (model spec, catalog) pairs the selected items encode, in order.

    A suite with a selected item for a candidate needs that candidate and the
    baseline, each on the suite's catalog and on every benchmark's catalog.
    """
    plan: list[tuple[str, Catalog]] = []
    planned: set[tuple[str, tuple[str, ...]]] = set()
    for item in session.items:
        label = getattr(item, "label", None)
        if not isinstance(item.parent, SuiteFile) or label is None:
            continue
        suite = item.parent.suite
        catalogs = [
            suite.catalog,
            *(benchmark.catalog for benchmark in suite.benchmarks),
        ]
        for spec in (state.baseline, state.candidates[label]):
            for catalog in catalogs:
                key = (spec, tuple(str(path) for path in catalog.image_paths()))
                if key not in planned:
                    planned.add(key)
                    plan.append((spec, catalog))
    return plan


def shard_bounds(count: int, world: World) -> tuple[int, int]:
    """Return this rank's [start, stop) of `count` rows. Sizes differ by 1 at most."""
    base, extra = divmod(count, world.size)
    start = world.rank * base + min(world.rank, extra)
    return start, start + base + (world.rank < extra)


def encode_in_shards(
    pool: ModelPool, plan: list[tuple[str, Catalog]], world: World
) -> None:
    """Encode each pair's images across the ranks and keep them in rank 0's pool.

    Every rank must call this with the same plan. A pair that fails on any rank (a
    model that does not load, an unreadable image) is not kept. Rank 0 then encodes
    it alone when an item needs it, and the item reports the error as in one process.
    """
    _check_same_plan(plan, world)
    for spec, catalog in plan:
        shard = _encode_shard(pool, spec, catalog, world)
        gathered = [None] * world.size if world.is_main else None
        dist.gather_object(shard, gathered, dst=0)
        if gathered is not None:
            _keep(pool, spec, catalog, gathered)


def _check_same_plan(plan: list[tuple[str, Catalog]], world: World) -> None:
    digest = hashlib.sha256()
    for spec, catalog in plan:
        digest.update(spec.encode() + b"\0")
        for path in catalog.image_paths():
            digest.update(str(path).encode() + b"\0")
    digests: list[str | None] = [None] * world.size
    dist.all_gather_object(digests, digest.hexdigest())
    differing = [rank for rank, other in enumerate(digests) if other != digests[0]]
    if differing:
        pytest.exit(
            f"torchrun ranks {differing} selected other models or catalog images "
            "than rank 0; start every rank in the same folder with the same "
            "arguments and files",
            returncode=pytest.ExitCode.USAGE_ERROR,
        )


def _encode_shard(
    pool: ModelPool, spec: str, catalog: Catalog, world: World
) -> np.ndarray | str | None:
    """Return this rank's (n, D) embeddings, an error message, or None if empty."""
    start, stop = shard_bounds(len(catalog), world)
    if start == stop:
        return None
    frame = catalog.frame.iloc[start:stop].reset_index(drop=True)
    name = f"{catalog.name} shard {world.rank + 1}/{world.size}"
    shard = Catalog(name, catalog.root, frame, catalog.sha256)
    # Through the pool, the shard gets the session's device, batch size and any
    # embedding cache, whose SQLite writes are safe from several processes.
    try:
        return pool.image_embeddings(spec, shard)
    except (ModelLoadError, ImageLoadError) as error:
        return f"{type(error).__name__}: {error}"


def _keep(
    pool: ModelPool, spec: str, catalog: Catalog, shards: list[np.ndarray | str | None]
) -> None:
    failures = [
        (rank, shard) for rank, shard in enumerate(shards) if isinstance(shard, str)
    ]
    if failures:
        rank, message = failures[0]
        logger.warning(
            "rank %d could not encode its shard of %s with %s (%s); rank 0 encodes "
            "the catalog alone if an item needs it",
            rank,
            catalog.name,
            spec,
            message,
        )
        return
    parts = [shard for shard in shards if shard is not None]
    if not parts:
        return
    pool.store_image_embeddings(spec, catalog, np.concatenate(parts))  # (N, D)
    logger.info(
        "encoded %d images of %s with %s across %d ranks",
        len(catalog),
        catalog.name,
        spec,
        len(shards),
    )
