"""The demo behind ``detspec demo [--iters N] [--out DIR] [--impl fast|reference] [--seed S] [--device cpu|cuda]``.

``run_demo`` trains the reduced Faster R-CNN of detspec/demo/config.py from scratch on the synthetic shapes stream
and shows that it learns, in a few minutes on a CPU:

1. writes a held-out validation set, DIR/val/{images/*.png, annotations.json} (``DemoSchedule.val_images``
   images, a seed no training image uses);
2. evaluates the untrained model on it (pycocotools, COCO box AP; AP50 is near 0);
3. trains (detspec/demo/train.py: AdamW, warmup + cosine, gradient clipping, fresh synthetic images every step);
4. evaluates again and prints AP50 before and after, and AP;
5. writes DIR/model_final.pth, DIR/results_untrained.json, DIR/results.json (COCO results), DIR/metrics.json
   and DIR/val_<id>.png: the first few val images with the detections scoring >= 0.5 drawn.

Under ``torchrun --nproc_per_node N -m detspec.demo ...`` every rank trains on its own slice of the stream with
DDP (gloo on CPU, nccl on CUDA); rank 0 alone evaluates and writes files.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detspec.data.synthetic import CATEGORY_IDS, CLASS_NAMES, CocoDetectionDataset, make_synthetic_coco
from detspec.demo.config import DEMO_IMAGE_SIZE, DEMO_MAX_OBJECTS, DEMO_RCNN, DEMO_SCHEDULE
from detspec.demo.train import TrainConfig, barrier, build_model, init_distributed, resolve_device, train
from detspec.evaluation import evaluate, reproduced_fraction
from detspec.io.categories import CategoryMap
from detspec.io.coco import detections_to_coco_results, write_results
from detspec.io.fileio import atomic_write
from detspec.io.images import draw, to_profile_format


def make_val_set(out_dir: Path, num_images: int = DEMO_SCHEDULE.val_images, seed: int = DEMO_SCHEDULE.val_seed,
                 image_size: Any = DEMO_IMAGE_SIZE, max_objects: int = DEMO_MAX_OBJECTS) -> Path:
    """The held-out synthetic val set (COCO files) under out_dir; returns the annotations path."""
    return make_synthetic_coco(out_dir, num_images=num_images, image_size=image_size, seed=seed,
                               max_objects=max_objects)


@torch.no_grad()
def predict(model: nn.Module, ann_path: Path, batch_size: int = 8) -> tuple[list[dict], dict[int, dict]]:
    """Run ``model`` (eval mode) over a COCO dataset; returns (COCO results list, {image_id: detections on the
    CPU})."""
    dataset = CocoDetectionDataset(ann_path, format="RGB")
    category_map: CategoryMap = dataset.category_map
    was_training = model.training
    model.eval()
    results: list[dict] = []
    per_image: dict[int, dict] = {}
    input_cfg = model.cfg.input
    for first in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(first, min(first + batch_size, len(dataset)))]
        outputs = model([to_profile_format(rgb, input_cfg) for rgb, _ in items])
        for (_, target), det in zip(items, outputs):
            det = {k: v.detach().cpu() for k, v in det.items()}
            per_image[target["image_id"]] = det
            results += detections_to_coco_results(target["image_id"], det["boxes"], det["scores"], det["classes"],
                                                  category_map)
    model.train(was_training)
    return results, per_image


def evaluate_model(model: nn.Module, ann_path: Path, results_path: Path | None = None) -> dict[str, Any]:
    """COCO box evaluation of ``model`` on ``ann_path``; writes the results JSON when ``results_path`` is given.
    Returns detspec.evaluation.evaluate's dict plus "per_image" detections."""
    results, per_image = predict(model, ann_path)
    if results_path is not None:
        write_results(results_path, results)
    stats = evaluate(ann_path, results)
    stats["per_image"] = per_image
    return stats


def evaluate_low_precision(model: nn.Module, ann_path: Path, fp32_per_image: dict[int, dict],
                           dtype: torch.dtype) -> dict[str, Any]:
    """The same evaluation with the model under ``autocast_dtype=dtype`` (PRECISION.AUTOCAST): AP, AP50, AP75 and
    how many of the fp32 detections it reproduces (same class, IoU >= 0.9, one to one; README 'Low precision')."""
    previous = model.autocast_dtype
    model.autocast_dtype = dtype
    try:
        stats = evaluate_model(model, ann_path)
    finally:
        model.autocast_dtype = previous
    reproduced, total = reproduced_fraction(fp32_per_image, stats["per_image"], 0.9)
    return {"dtype": str(dtype).removeprefix("torch."), **{k: stats[k] for k in ("AP", "AP50", "AP75")},
            "reproduced": reproduced, "of": total, "reproduced_fraction": reproduced / total if total else 1.0}


def draw_detections(ann_path: Path, per_image: dict[int, dict], out_dir: Path, count: int,
                    threshold: float, scale: int = 3) -> list[Path]:
    """Draw the detections of the first ``count`` images onto them, enlarged ``scale`` times (nearest
    neighbour) so that the class labels are legible: out_dir/val_<image id>.png."""
    dataset = CocoDetectionDataset(ann_path, format="RGB")
    names = list(zip(CATEGORY_IDS, CLASS_NAMES))
    paths = []
    for i in range(min(count, len(dataset))):
        rgb, target = dataset[i]
        det = per_image[target["image_id"]]
        path = out_dir / f"val_{target['image_id']:06d}.png"
        big = rgb.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
        draw(big, det["boxes"] * scale, det["scores"], det["classes"], names, path, threshold)
        paths.append(path)
    return paths


def default_threads() -> int:
    """Intra-op threads per process: OMP_NUM_THREADS when set, else 1.

    Why not torch's default (one per core): this model's ops are small (128..160 px images), so a second
    thread gains little on an idle machine, while on a busy one (other processes on the same cores) OpenMP's
    barrier spinning makes each iteration up to 30x slower (measured: 0.4 s vs 12 s per iteration on 2 shared
    cores). To use several cores, run several processes: torchrun --nproc_per_node N -m detspec.demo.
    """
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def run_demo(iters: int = DEMO_SCHEDULE.iterations, out: str | Path = "demo_out", impl: str = "fast",
             seed: int = 0, device: str = "cpu", val_images: int = DEMO_SCHEDULE.val_images,
             images_per_batch: int = DEMO_SCHEDULE.images_per_batch, log_every: int = 20,
             draw_images: int = DEMO_SCHEDULE.draw_images, progress: bool = True,
             threads: int | None = None) -> dict[str, Any]:
    """The whole demo (module docstring); returns the metrics dict it writes to out/metrics.json (on rank 0;
    other ranks return their training summary). ``threads``: torch intra-op threads per process (None: 1, or
    OMP_NUM_THREADS when set; see ``default_threads``)."""
    start = time.perf_counter()
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
    torch.set_num_threads(threads if threads is not None else default_threads())
    info = init_distributed(device)
    dev = resolve_device(device, info)
    out_dir = Path(out)
    say = (lambda *a: print(*a, flush=True)) if info.is_main else (lambda *a: None)
    model = build_model(impl, DEMO_RCNN, seed).to(dev)
    params = sum(p.numel() for p in model.parameters())
    say(f"detspec demo: {impl} Faster R-CNN (reduced R-FPN, {params:,} parameters, detspec/demo/config.py), "
        f"{iters} iterations x {images_per_batch} images x {info.world_size} process(es) on {dev}, seed {seed}")

    metrics: dict[str, Any] = {}
    ann_path = out_dir / "val" / "annotations.json"
    if info.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        ann_path = make_val_set(out_dir / "val", num_images=val_images)
        say(f"wrote the held-out val set: {val_images} images -> {ann_path} ({time.perf_counter() - t:.1f} s)")
        t = time.perf_counter()
        before = evaluate_model(model, ann_path, out_dir / "results_untrained.json")
        say(f"untrained: AP50 {before['AP50']:.3f}  AP {before['AP']:.3f}  ({before['num_detections']} detections, "
            f"{time.perf_counter() - t:.1f} s)")
        metrics["untrained"] = {k: before[k] for k in ("AP", "AP50", "AP75")}
    barrier(info)

    cfg = TrainConfig(iterations=iters, images_per_batch=images_per_batch, seed=seed, out_dir=str(out_dir),
                      log_every=log_every)
    summary = train(model, cfg, dev, info, progress=progress)
    say(f"trained {iters} iterations in {summary['seconds']:.1f} s ({summary['it_per_s']:.2f} it/s); "
        f"checkpoint {summary['checkpoint']}")
    if not info.is_main:
        return summary

    t = time.perf_counter()
    after = evaluate_model(model, ann_path, out_dir / "results.json")
    drawn = draw_detections(ann_path, after["per_image"], out_dir, draw_images, DEMO_SCHEDULE.draw_thresh)
    say(f"trained:   AP50 {after['AP50']:.3f}  AP {after['AP']:.3f}  ({after['num_detections']} detections, "
        f"{time.perf_counter() - t:.1f} s)")
    print(after["summary"], end="", flush=True)
    t = time.perf_counter()
    low = evaluate_low_precision(model, ann_path, after["per_image"], torch.bfloat16)
    say(f"trained, bf16 autocast: AP50 {low['AP50']:.3f}  AP {low['AP']:.3f}; reproduces {low['reproduced']} of "
        f"{low['of']} fp32 detections ({100 * low['reproduced_fraction']:.1f}%: same class, IoU >= 0.9; "
        f"{time.perf_counter() - t:.1f} s)")
    total = time.perf_counter() - start
    metrics.update(
        trained={k: after[k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100")},
        iterations=iters, images_per_batch=images_per_batch, world_size=info.world_size, impl=impl, seed=seed,
        device=str(dev), train_seconds=summary["seconds"], total_seconds=total,
        final_losses=summary["final_losses"], val_images=val_images, trained_bf16=low,
    )
    atomic_write(out_dir / "metrics.json", json.dumps(metrics, indent=1))
    say(f"AP50: untrained {metrics['untrained']['AP50']:.3f} -> trained {after['AP50']:.3f} "
        f"(AP {after['AP']:.3f}); drew {len(drawn)} val images to {out_dir}/val_*.png; wrote {out_dir}/results.json "
        f"and {out_dir}/metrics.json; total {total:.1f} s")
    return metrics
