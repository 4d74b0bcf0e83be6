"""Training under torchrun: process group, batch shards, DDP and the gathered loss.

`batch_size` stays the global batch: each optimizer step contrasts the same
batch_size items as a one-process run, split into one contiguous shard per process.
The loss gathers every shard's features, so the negatives, the gradient and the
schedule are those of one process, and a run resumes with any number of processes.
Without torchrun (WORLD_SIZE unset or 1) every function here hands its input to the
one-process code unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from trainer import loss
from trainer.compute import Compute
from trainer.config import ConfigError

logger = logging.getLogger(__name__)
# The variables torchrun sets in each process it starts. A child process that runs on
# its own, such as the gate after training, gets an environment without them.
TORCHRUN_VARIABLES = (
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "GROUP_WORLD_SIZE",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "ROLE_NAME",
    "MASTER_ADDR",
    "MASTER_PORT",
    "TORCHELASTIC_RUN_ID",
    "TORCHELASTIC_RESTART_COUNT",
    "TORCHELASTIC_MAX_RESTARTS",
    "TORCHELASTIC_USE_AGENT_STORE",
)
Result = TypeVar("Result")


@dataclass(frozen=True)
class World:
    """This process's rank among the training processes, and their count."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0  # rank on this node, which picks the CUDA device
    # Process group of the loss's collectives, kept apart from the default group
    # that DDP all-reduces gradients on during the same backward pass.
    group: Any = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE_PROCESS = World()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}: expected an integer, got {value!r}; "
            "start several processes with torchrun, which sets it"
        ) from None


def env_world_size() -> int:
    """Return WORLD_SIZE as torchrun sets it, or 1 when it is unset."""
    return _env_int("WORLD_SIZE", 1)


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Join the torchrun process group for the duration, when WORLD_SIZE > 1.

    The backend is gloo for CPU tensors and, where CUDA is available, nccl for CUDA
    tensors, so one group serves runs on either device. Ranks other than 0 log
    errors only, so that the log reads as one run's.
    """
    if env_world_size() <= 1 or dist.is_initialized():
        yield
        return
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    if dist.get_rank() != 0:
        logging.getLogger().setLevel(logging.ERROR)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _check_initialized(size: int) -> None:
    if size > 1 and not dist.is_initialized():
        raise RuntimeError(
            f"WORLD_SIZE is {size} but torch.distributed is not initialized; call "
            "train() inside trainer.distributed.process_group(), as python -m "
            "trainer does"
        )


def is_main_process() -> bool:
    """Return whether this process is rank 0, or the only process."""
    _check_initialized(env_world_size())
    return not dist.is_initialized() or dist.get_rank() == 0


def setup_world() -> World:
    """Return this process's World, with its own group for the loss's collectives."""
    size = env_world_size()
    if size <= 1:
        return SINGLE_PROCESS
    _check_initialized(size)
    return World(
        rank=dist.get_rank(),
        size=dist.get_world_size(),
        local_rank=_env_int("LOCAL_RANK", 0),
        group=dist.new_group(),
    )


def single_process_env() -> dict[str, str]:
    """Return this process's environment without the variables torchrun sets."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in TORCHRUN_VARIABLES
    }


def place(compute: Compute, world: World) -> Compute:
    """Return the compute of this rank: CUDA device LOCAL_RANK on a CUDA run."""
    if world.size == 1 or compute.device.type != "cuda":
        return compute
    count = torch.cuda.device_count()
    if world.local_rank >= count:
        raise ConfigError(
            f"device: LOCAL_RANK is {world.local_rank} but this node has {count} "
            f"CUDA devices; start at most {count} processes per node "
            "(torchrun --nproc-per-node)"
        )
    torch.cuda.set_device(world.local_rank)
    return Compute(torch.device("cuda", world.local_rank), compute.precision)


def check_batch_size(batch_size: int, train_size: int, world: World) -> None:
    """Check that every process gets items of every batch; warn of a skipped batch."""
    if world.size == 1:
        return
    if batch_size < world.size:
        raise ConfigError(
            f"batch_size: {batch_size} is below the {world.size} processes, and each "
            f"process needs at least one item of every batch; set batch_size to at "
            f"least {world.size} or start fewer processes"
        )
    remainder = train_size % batch_size
    if 0 < remainder < world.size:
        logger.warning(
            "the last batch of each epoch has %d items, fewer than the %d processes, "
            "so every epoch skips it; a batch_size that divides the %d training "
            "items, or leaves at least %d over, keeps it",
            remainder,
            world.size,
            train_size,
            world.size,
        )


class ContrastiveForward(torch.nn.Module):
    """Both towers of a CLIP model in one forward call, the call that DDP wraps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, tokens: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return normalised image (B, D) and text (B, D) features and exp(scale)."""
        image_features = self.model.encode_image(images, normalize=True)
        text_features = self.model.encode_text(tokens, normalize=True)
        return image_features, text_features, self.model.logit_scale.exp()


def wrap_model(
    model: torch.nn.Module, world: World, device: torch.device
) -> torch.nn.Module:
    """Return the forward of a training step: DDP across the ranks under torchrun.

    DDP broadcasts rank 0's weights when it is built and averages the gradients of
    every backward pass. The model itself stays unwrapped, so its state_dict keys
    and the checkpoints do not change.
    """
    forward = ContrastiveForward(model)
    if world.size == 1:
        return forward
    # NOTE: DDP expects every trainable parameter to get a gradient in each step, as
    # in open_clip's CLIP and the tiny test models. A tower with unused trainable
    # weights would need find_unused_parameters=True here.
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(forward, device_ids=device_ids)


def shard_batches(
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]], world: World
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Return this rank's contiguous shard of each (images, caption ids) batch.

    Shards differ in size by one item at most, and rank r takes the r-th. A batch
    with fewer items than processes is skipped on every rank, because a model cannot
    encode an empty shard. check_batch_size warns of it.
    """
    if world.size == 1:
        return list(batches)
    shards = []
    for images, caption_ids in batches:
        if len(images) < world.size:
            continue
        shards.append(
            (
                images.tensor_split(world.size)[world.rank],
                caption_ids.tensor_split(world.size)[world.rank],
            )
        )
    return shards


class _GatherRows(torch.autograd.Function):
    """All-gather of (n_r, D) rows whose backward sums every rank's gradient.

    Each rank's loss reads every rank's rows, so the gradient of a rank's own rows
    is the sum of the gradients that all ranks compute for them.
    """

    @staticmethod
    def forward(ctx, rows: torch.Tensor, sizes: list[int], world: World):
        ctx.sizes, ctx.world = sizes, world
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))  # (max n_r, D)
        padded[: len(rows)] = rows
        parts = [torch.empty_like(padded) for _ in sizes]
        dist.all_gather(parts, padded, group=world.group)
        return torch.cat([part[:size] for part, size in zip(parts, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad = grad.contiguous().clone()  # (sum n_r, D)
        dist.all_reduce(grad, group=ctx.world.group)
        start = sum(ctx.sizes[: ctx.world.rank])
        return grad[start : start + ctx.sizes[ctx.world.rank]], None, None


def _shard_sizes(count: int, world: World, device: torch.device) -> list[int]:
    local = torch.tensor([count], device=device)
    sizes = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(sizes, local, group=world.group)
    return [int(size.item()) for size in sizes]


def contrastive_loss(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    logit_scale: torch.Tensor,
    world: World,
) -> torch.Tensor:
    """Return CLIP's loss of the global batch whose shard this rank holds.

    One process: trainer.loss.contrastive_loss. Under torchrun each rank scores its
    own (n_r, D) rows against the gathered (B, D) columns of both towers (a local
    loss, as open_clip's ClipLoss computes with local_loss and gather_with_grad).
    The sum over ranks of these rows' cross-entropies, divided by 2B, is the
    one-process loss of the batch. Scaling each rank's share by the world size undoes
    DDP's averaging, so the gradient equals the one-process gradient. The returned
    value is the global batch loss on every rank, for logging.
    """
    if world.size == 1:
        return loss.contrastive_loss(image_features, text_features, logit_scale)
    device = image_features.device
    sizes = _shard_sizes(len(image_features), world, device)
    all_images = _GatherRows.apply(image_features, sizes, world)  # (B, D)
    all_texts = _GatherRows.apply(text_features, sizes, world)  # (B, D)
    offset = sum(sizes[: world.rank])
    labels = torch.arange(offset, offset + len(image_features), device=device)
    per_image = logit_scale * image_features @ all_texts.T  # (n_r, B)
    per_text = logit_scale * text_features @ all_images.T  # (n_r, B)
    share = (
        F.cross_entropy(per_image, labels, reduction="sum")
        + F.cross_entropy(per_text, labels, reduction="sum")
    ) / (2 * sum(sizes))
    batch_loss = share.detach().clone()
    dist.all_reduce(batch_loss, group=world.group)
    scaled = share * world.size
    # The value is the batch loss and the gradient is that of the scaled share.
    return scaled + (batch_loss - scaled).detach()


def run_on_main(world: World, function: Callable[..., Result], *args: Any) -> Result:
    """Call function on rank 0 alone and return its result on every rank."""
    if world.size == 1:
        return function(*args)
    result = [function(*args) if world.is_main else None]
    dist.broadcast_object_list(result, src=0, group=world.group)
    return result[0]


def sum_over_ranks(world: World, *values: float) -> tuple[float, ...]:
    """Return each value summed over the ranks, the same bits on every rank."""
    if world.size == 1:
        return values
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, values, group=world.group)
    # Every rank adds the same numbers in rank order, so all get identical sums.
    return tuple(sum(column) for column in zip(*gathered, strict=True))
