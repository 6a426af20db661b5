"""A small training loop for detspec's Faster R-CNN on the synthetic shapes stream, single-process or DDP.

Used by ``detspec demo`` (detspec/demo/run.py) and its tests. What it does:

- Data: an endless ``SyntheticCOCO`` stream (detspec/data/synthetic.py). Iteration ``t`` of rank ``r`` (of
  ``W`` processes) takes images ``(t * W + r) * B .. + B - 1`` of the stream with seed ``seed``: every rank
  reads a different, disjoint slice, every image is new (no epochs, no augmentation needed), and a run is
  reproducible image for image.
- Optimizer: AdamW with linear warmup and cosine decay (``lr_at``), gradient-norm clipping. Seeded: the model
  init comes from ``torch.manual_seed(seed)``, the ROI/anchor subsampling from a per-rank ``torch.Generator``.
- Distributed: under ``torchrun`` (WORLD_SIZE > 1 in the environment) ``init_distributed`` starts a process
  group (gloo on CPU, nccl on CUDA) and the model is wrapped in ``DistributedDataParallel``, which averages the
  gradients, so every rank holds the same parameters after every step. Logged losses are all-reduced (mean over
  ranks). Only rank 0 prints progress and writes files.
- Progress: one line per ``log_every`` iterations on stderr (rewritten in place on a terminal): iteration,
  total and per-term losses, learning rate, it/s and ETA.
- Checkpoints: ``{"model", "optimizer", "iteration", "config"}`` with ``torch.save`` every
  ``checkpoint_every`` iterations (if > 0) and at the end, as ``out_dir/model_final.pth``; readable with
  ``torch.load(path, weights_only=True)``. (``detspec.checkpoints.save_detspec`` checks the full R50-FPN layout,
  which the reduced demo model does not have.)

Shape legend: B images per batch per process, W processes, H x W an image, G objects of an image.
"""

from __future__ import annotations

import dataclasses
import importlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP

from detspec.data.synthetic import SyntheticCOCO
from detspec.demo.config import DEMO_IMAGE_SIZE, DEMO_MAX_OBJECTS, DEMO_RCNN, DEMO_SCHEDULE
from detspec.io.fileio import atomic_save
from detspec.io.images import to_profile_format
from spec.config import FasterRCNNConfig

LOSS_NAMES: tuple[str, ...] = ("loss_rpn_cls", "loss_rpn_loc", "loss_cls", "loss_box_reg")
_SHORT = {"loss_rpn_cls": "rpn_cls", "loss_rpn_loc": "rpn_loc", "loss_cls": "cls", "loss_box_reg": "box"}


@dataclass(frozen=True)
class TrainConfig:
    """Everything ``train`` needs besides the model; defaults are the demo's (detspec/demo/config.py)."""

    iterations: int = DEMO_SCHEDULE.iterations
    images_per_batch: int = DEMO_SCHEDULE.images_per_batch  # per process
    lr: float = DEMO_SCHEDULE.lr
    weight_decay: float = DEMO_SCHEDULE.weight_decay
    betas: tuple[float, float] = DEMO_SCHEDULE.betas
    warmup_iters: int = DEMO_SCHEDULE.warmup_iters
    warmup_factor: float = DEMO_SCHEDULE.warmup_factor
    final_lr_factor: float = DEMO_SCHEDULE.final_lr_factor
    clip_grad_norm: float | None = DEMO_SCHEDULE.clip_grad_norm
    seed: int = 0
    image_size: Any = DEMO_IMAGE_SIZE
    max_objects: int = DEMO_MAX_OBJECTS
    log_every: int = 20
    checkpoint_every: int = 0  # 0: only the final checkpoint
    out_dir: str | None = None  # None: write no checkpoint

    def __post_init__(self) -> None:
        for name in ("iterations", "images_per_batch"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        for name in ("warmup_iters", "checkpoint_every", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be an int >= 0, got {value!r}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise ValueError(f"log_every must be an int >= 1, got {self.log_every!r}")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"lr must be a positive finite float, got {self.lr!r}")
        if not 0 < self.warmup_factor <= 1 or not 0 <= self.final_lr_factor <= 1:
            raise ValueError(f"warmup_factor must be in (0, 1] and final_lr_factor in [0, 1], got "
                             f"{self.warmup_factor!r} and {self.final_lr_factor!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {self.clip_grad_norm!r}")


# ----------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str) -> DistInfo:
    """Start the process group when launched by torchrun with WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA);
    otherwise (or when a group already exists) just report rank and world size."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def resolve_device(device: str, info: DistInfo) -> torch.device:
    """'cpu', 'cuda' (-> cuda:LOCAL_RANK under torchrun) or an explicit 'cuda:N'."""
    if device == "cpu":
        return torch.device("cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} was requested but CUDA is not available")
        return torch.device(f"cuda:{info.local_rank}") if device == "cuda" else torch.device(device)
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def barrier(info: DistInfo) -> None:
    if info.distributed:
        dist.barrier()


# ----------------------------------------------------------------------------------------------- data


def to_model_input(rgb_hwc, input_cfg) -> Tensor:
    """A synthetic image (uint8 [H, W, 3] RGB numpy) -> float [3, H, W] in the profile's format and scale."""
    return to_profile_format(torch.from_numpy(rgb_hwc).permute(2, 0, 1), input_cfg)


def batches(cfg: TrainConfig, input_cfg, info: DistInfo = DistInfo(),
            start: int = 0) -> Iterator[tuple[list[Tensor], list[dict[str, Tensor]]]]:
    """Endless batches of this rank's slice of the synthetic stream (module docstring), from iteration ``start``:
    (B images [3, H, W] in the profile's format, B targets {"boxes": [G, 4] XYXY, "classes": int64 [G]})."""
    stream = SyntheticCOCO(None, cfg.image_size, seed=cfg.seed, max_objects=cfg.max_objects)
    b = cfg.images_per_batch
    t = start
    while True:
        first = (t * info.world_size + info.rank) * b
        images, targets = [], []
        for i in range(first, first + b):
            image, boxes, classes = stream[i]
            images.append(to_model_input(image, input_cfg))
            targets.append({"boxes": torch.from_numpy(boxes), "classes": torch.from_numpy(classes)})
        yield images, targets
        t += 1


# ----------------------------------------------------------------------------------------------- schedule


def lr_at(iteration: int, cfg: TrainConfig) -> float:
    """Learning rate of (0-based) ``iteration``: linear warmup from lr * warmup_factor over warmup_iters, then
    cosine decay from lr to lr * final_lr_factor at the last iteration."""
    if iteration < cfg.warmup_iters:
        alpha = iteration / cfg.warmup_iters
        return cfg.lr * (cfg.warmup_factor * (1 - alpha) + alpha)
    span = max(cfg.iterations - 1 - cfg.warmup_iters, 1)
    progress = min((iteration - cfg.warmup_iters) / span, 1.0)
    return cfg.lr * (cfg.final_lr_factor + (1 - cfg.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress)))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; no weight decay on biases (1-d parameters)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() > 1]
    no_decay = [p for p in params if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)


# ----------------------------------------------------------------------------------------------- progress


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    m, s = divmod(seconds, 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


class Progress:
    """Prints 'iter t/T  loss L (rpn_cls .. rpn_loc .. cls .. box ..)  lr ..  X it/s  ETA ..' to ``stream``;
    on a terminal the line is rewritten in place, otherwise each report is a new line."""

    def __init__(self, total: int, stream: TextIO | None = None, prefix: str = "train") -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.prefix = prefix
        self.start = time.perf_counter()
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.last = ""

    def update(self, done: int, losses: dict[str, float], lr: float) -> str:
        elapsed = time.perf_counter() - self.start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else float("nan")
        terms = " ".join(f"{_SHORT.get(k, k)} {v:.3f}" for k, v in losses.items())
        total = sum(losses.values())
        line = (f"{self.prefix} iter {done}/{self.total}  loss {total:.3f} ({terms})  lr {lr:.2e}  "
                f"{rate:.2f} it/s  ETA {_duration(eta) if math.isfinite(eta) else '?'}")
        if self.tty:
            self.stream.write("\r" + line.ljust(len(self.last)))
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self.last = line
        return line


# ----------------------------------------------------------------------------------------------- training


def save_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, iteration: int,
                    model_cfg: FasterRCNNConfig) -> Path:
    """torch.save {"model": state dict on the CPU, "optimizer", "iteration", "config": the model config as a
    dict}; everything in it loads with ``weights_only=True``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    checkpoint = {"model": state, "optimizer": optimizer.state_dict(), "iteration": iteration,
                  "config": dataclasses.asdict(model_cfg)}
    atomic_save(path, lambda fh: torch.save(checkpoint, fh))  # fsynced temporary file, then os.replace
    return path


def parameter_checksum(model: nn.Module) -> float:
    """Sum over parameters of sum(p * (1 + index within p)), in float64: a cheap fingerprint of the weights that
    depends on every value's position (for checking that DDP ranks hold the same weights)."""
    total = 0.0
    with torch.no_grad():
        for p in model.parameters():
            flat = p.detach().to("cpu", torch.float64).reshape(-1)
            total += float((flat * torch.arange(1, flat.numel() + 1, dtype=torch.float64)).sum())
    return total


def train(model: nn.Module, cfg: TrainConfig = TrainConfig(), device: str | torch.device = "cpu",
          info: DistInfo | None = None, progress: bool = True,
          on_log: Callable[[int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Train ``model`` (a FasterRCNN, train-mode losses contract) in place; returns a summary dict:
    iterations, seconds, it_per_s, final_losses (the last logged, rank-averaged), history [(iteration,
    losses)], checkpoint (path or None), rank, world_size.

    Under an initialized process group (``init_distributed``) the model is wrapped in DDP for the loop (the
    wrapper is dropped afterwards; ``model`` holds the trained weights). Raises FloatingPointError if a loss
    becomes non-finite, naming the iteration and the losses.
    """
    if not isinstance(cfg, TrainConfig):
        raise TypeError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
    if info is None:
        info = DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))) \
            if dist.is_available() and dist.is_initialized() else DistInfo()
    device = torch.device(device)
    model_cfg: FasterRCNNConfig = model.cfg  # type: ignore[assignment]
    model.to(device).train()
    net: nn.Module = model
    if info.distributed:
        net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = make_optimizer(model, cfg)
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 1_000_003 + info.rank + 1)
    params = [p for p in model.parameters() if p.requires_grad]
    report = Progress(cfg.iterations) if progress and info.is_main else None
    out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
    history: list[tuple[int, dict[str, float]]] = []
    running = torch.zeros(len(LOSS_NAMES), dtype=torch.float64)
    count = 0
    checkpoint = None
    start = time.perf_counter()
    data = batches(cfg, model_cfg.input, info)
    for it in range(cfg.iterations):
        lr = lr_at(it, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, targets = next(data)
        losses = net(images, targets, generator=generator)
        total = sum(losses[k] for k in LOSS_NAMES)
        values = torch.stack([losses[k].detach() for k in LOSS_NAMES]).to("cpu", torch.float64)
        if not torch.isfinite(values).all():
            raise FloatingPointError(f"rank {info.rank}: non-finite loss at iteration {it}: "
                                     f"{dict(zip(LOSS_NAMES, values.tolist()))}")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad_norm)
        optimizer.step()
        running += values
        count += 1
        done = it + 1
        if done % cfg.log_every == 0 or done == cfg.iterations:
            mean = running / count
            if info.distributed:  # average over ranks (gloo reduces CPU tensors; nccl needs device tensors)
                reduced = mean.to(device)
                dist.all_reduce(reduced)
                mean = reduced.cpu() / info.world_size
            logged = dict(zip(LOSS_NAMES, mean.tolist()))
            history.append((done, logged))
            running.zero_()
            count = 0
            if report is not None:
                report.update(done, logged, lr)
            if on_log is not None and info.is_main:
                on_log(done, logged)
        if out_dir is not None and info.is_main and cfg.checkpoint_every and done % cfg.checkpoint_every == 0 \
                and done != cfg.iterations:
            save_checkpoint(out_dir / f"model_{done:07d}.pth", model, optimizer, done, model_cfg)
    seconds = time.perf_counter() - start
    if out_dir is not None and info.is_main:
        checkpoint = save_checkpoint(out_dir / "model_final.pth", model, optimizer, cfg.iterations, model_cfg)
    barrier(info)
    return {"iterations": cfg.iterations, "seconds": seconds, "it_per_s": cfg.iterations / max(seconds, 1e-9),
            "final_losses": history[-1][1] if history else {}, "history": history,
            "checkpoint": str(checkpoint) if checkpoint is not None else None, "rank": info.rank,
            "world_size": info.world_size}


def build_model(impl: str = "fast", model_cfg: FasterRCNNConfig = DEMO_RCNN, seed: int = 0) -> nn.Module:
    """A freshly initialized FasterRCNN of ``impl`` ('fast' or 'reference') with weights from ``seed`` (the same
    on every rank), fed images at their own size (no resize)."""
    if impl not in ("fast", "reference"):
        raise ValueError(f"impl must be 'fast' or 'reference', got {impl!r}")
    module = importlib.import_module(f"{impl}.rcnn")
    torch.manual_seed(seed)
    return module.FasterRCNN(model_cfg, resize=False)


__all__ = [
    "DistInfo", "LOSS_NAMES", "Progress", "TrainConfig", "barrier", "batches", "build_model", "init_distributed",
    "lr_at", "make_optimizer", "parameter_checksum", "resolve_device", "save_checkpoint", "to_model_input",
    "train",
]
