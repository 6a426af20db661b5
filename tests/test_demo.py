"""detspec demo and the training loop (detspec/demo/train.py): in-process smoke runs and a 2-process DDP run (gloo,
CPU) under torchrun. Nothing here asserts that the loss decreases or any wall-clock time: a few iterations prove
neither; the demo's learning is measured by running ``detspec demo`` itself (figures in the README)."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from detspec.data.synthetic import SyntheticCOCO
from detspec.demo.config import DEMO_RCNN
from detspec.demo.train import (
    LOSS_NAMES,
    DistInfo,
    Progress,
    TrainConfig,
    batches,
    build_model,
    lr_at,
    parameter_checksum,
    train,
)

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(images_per_batch=1, image_size=(64, 64), max_objects=2, log_every=1)


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread, as the demo runs (detspec.demo.default_threads): on shared cores torch's default of
    one thread per core makes these small ops many times slower. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_lr_schedule_warmup_and_cosine():
    cfg = TrainConfig(iterations=11, lr=1.0, warmup_iters=4, warmup_factor=0.2, final_lr_factor=0.0)
    # warmup: lr * (f * (1 - t/4) + t/4): t=0 -> 0.2, t=2 -> 0.2 * 0.5 + 0.5 = 0.6
    assert lr_at(0, cfg) == pytest.approx(0.2)
    assert lr_at(2, cfg) == pytest.approx(0.6)
    # cosine over iterations 4..10 (span 6): t=4 -> 1, t=7 -> 0.5 * (1 + cos(pi/2)) = 0.5, t=10 -> 0
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(7, cfg) == pytest.approx(0.5)
    assert lr_at(10, cfg) == pytest.approx(0.0, abs=1e-12)


def test_train_config_rejects_bad_values():
    with pytest.raises(ValueError, match="iterations"):
        TrainConfig(iterations=0)
    with pytest.raises(ValueError, match="lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(ValueError, match="clip_grad_norm"):
        TrainConfig(clip_grad_norm=0.0)


def test_batches_give_each_rank_a_disjoint_slice_of_the_stream():
    cfg = TrainConfig(images_per_batch=2, image_size=(48, 48), max_objects=2, seed=3)
    stream = SyntheticCOCO(None, (48, 48), seed=3, max_objects=2)
    # iteration t of rank r of W reads stream images (t * W + r) * B .. + B - 1: with W = 2, B = 2
    # rank 0 reads 0, 1 then 4, 5; rank 1 reads 2, 3 then 6, 7.
    expected = {0: [0, 1, 4, 5], 1: [2, 3, 6, 7]}
    for rank, indices in expected.items():
        it = batches(cfg, DEMO_RCNN.input, DistInfo(rank=rank, world_size=2))
        got = [t for _ in range(2) for t in next(it)[1]]
        for target, i in zip(got, indices):
            _, boxes, classes = stream[i]
            assert torch.equal(target["boxes"], torch.from_numpy(boxes))
            assert torch.equal(target["classes"], torch.from_numpy(classes))


def test_batch_images_are_in_the_profile_format():
    cfg = TrainConfig(images_per_batch=1, image_size=(40, 48), max_objects=1)
    images, targets = next(batches(cfg, DEMO_RCNN.input))
    rgb, _, _ = SyntheticCOCO(None, (40, 48), seed=0, max_objects=1)[0]
    assert images[0].shape == (3, 40, 48) and images[0].dtype == torch.float32
    # detectron2 profile: BGR on the 0-255 scale, so channel 0 is the image's blue channel
    assert torch.equal(images[0][0], torch.from_numpy(rgb[:, :, 2]).float())
    assert targets[0]["classes"].dtype == torch.int64


def test_progress_line_has_iteration_losses_rate_and_eta(tmp_path):
    path = tmp_path / "log.txt"
    with open(path, "w") as stream:
        line = Progress(10, stream).update(5, {"loss_cls": 0.5, "loss_box_reg": 0.25}, 1e-3)
    assert path.read_text() == line + "\n"
    assert re.match(r"train iter 5/10  loss 0\.750 \(cls 0\.500 box 0\.250\)  lr 1\.00e-03  [\d.]+ it/s  ETA ", line)


@pytest.mark.parametrize("which", ["fast", "reference"])
def test_training_smoke_run_in_process(which, tmp_path):
    model = build_model(which, DEMO_RCNN, seed=0)
    before = parameter_checksum(model)
    cfg = TrainConfig(iterations=3 if which == "fast" else 2, out_dir=str(tmp_path), **SMALL)
    summary = train(model, cfg, progress=False)
    assert len(summary["history"]) == cfg.iterations
    for _, losses in summary["history"]:
        assert set(losses) == set(LOSS_NAMES)
        assert all(math.isfinite(v) for v in losses.values())
    assert parameter_checksum(model) != before  # the optimizer stepped
    checkpoint = torch.load(summary["checkpoint"], weights_only=True)
    assert checkpoint["iteration"] == cfg.iterations
    assert checkpoint["config"]["roi_heads"]["num_classes"] == 8
    state = model.state_dict()
    assert checkpoint["model"].keys() == state.keys()
    assert all(torch.equal(checkpoint["model"][k], state[k]) for k in state)
    fresh = build_model(which, DEMO_RCNN, seed=1)
    fresh.load_state_dict(checkpoint["model"])
    assert parameter_checksum(fresh) == parameter_checksum(model)


def test_training_is_seeded(tmp_path):
    runs = []
    for _ in range(2):
        model = build_model("fast", DEMO_RCNN, seed=0)
        train(model, TrainConfig(iterations=2, **SMALL), progress=False)
        runs.append(parameter_checksum(model))
    assert runs[0] == runs[1]


def test_nonfinite_loss_raises(tmp_path):
    model = build_model("fast", DEMO_RCNN, seed=0)
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias.fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="iteration 0"):
        train(model, TrainConfig(iterations=2, **SMALL), progress=False)


def test_demo_end_to_end_in_process(tmp_path, capsys):
    from detspec.demo import run_demo

    metrics = run_demo(iters=2, out=tmp_path, val_images=2, images_per_batch=1, log_every=1, draw_images=2,
                       progress=False)
    out = capsys.readouterr().out
    assert "untrained: AP50" in out and "trained:   AP50" in out
    for name in ("AP", "AP50"):
        assert -1.0 <= metrics["untrained"][name] <= 1.0
        assert -1.0 <= metrics["trained"][name] <= 1.0
    assert json.loads((tmp_path / "metrics.json").read_text())["iterations"] == 2
    results = json.loads((tmp_path / "results.json").read_text())
    assert isinstance(results, list)
    assert (tmp_path / "model_final.pth").is_file()
    assert (tmp_path / "val" / "annotations.json").is_file()
    assert sorted(p.name for p in tmp_path.glob("val_*.png")) == ["val_000001.png", "val_000002.png"]


def test_demo_parser_registers_the_command():
    import argparse

    from detspec.commands.demo import add_parser

    parser = argparse.ArgumentParser(prog="detspec")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo", "--iters", "7", "--out", "x", "--impl", "reference", "--seed", "3"])
    assert (args.iters, args.out, args.impl, args.seed, args.device) == (7, "x", "reference", 3, "cpu")
    assert callable(args.func)


_WORKER = """
import sys
import torch
from detspec.demo.config import DEMO_RCNN
from detspec.demo.train import TrainConfig, batches, build_model, init_distributed, parameter_checksum, train

info = init_distributed("cpu")
model = build_model("fast", DEMO_RCNN, seed=0)
init = parameter_checksum(model)
cfg = TrainConfig(iterations=3, images_per_batch=1, image_size=(64, 64), max_objects=2, log_every=1,
                  out_dir=sys.argv[1])
first = next(batches(cfg, DEMO_RCNN.input, info))[1][0]["boxes"]
summary = train(model, cfg, "cpu", info, progress=False)
# One write of the whole line, newline included: both ranks share torchrun's stdout pipe, and print() writes the
# text and the newline separately, so two ranks' lines could interleave ("...}rank 1/2 ...").
sys.stdout.write(f"rank {info.rank}/{info.world_size} backend {torch.distributed.get_backend()} init {init!r} "
                 f"final {parameter_checksum(model)!r} data {float(first.sum())!r} "
                 f"loss {summary['final_losses']!r}\\n")
sys.stdout.flush()
torch.distributed.destroy_process_group()
"""


def test_ddp_two_processes_with_torchrun(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(_WORKER))
    out_dir = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           str(script), str(out_dir)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = {}
    for m in re.finditer(r"rank (\d)/(\d) backend (\w+) init (\S+) final (\S+) data (\S+) loss (\{[^}]*\})",
                         proc.stdout):
        lines[int(m.group(1))] = m.groups()
    output = proc.stdout[-3000:] + proc.stderr[-3000:]  # shown with any failure below
    assert sorted(lines) == [0, 1], output
    r0, r1 = lines[0], lines[1]
    assert r0[1] == r1[1] == "2" and r0[2] == r1[2] == "gloo", output
    assert r0[3] == r1[3], output  # same seed, same initial weights
    assert float(r0[4]) != float(r0[3]), output  # trained
    assert r0[4] == r1[4], output  # DDP: identical parameters on both ranks after training (bit for bit)
    assert r0[5] != r1[5], output  # each rank read its own images
    assert r0[6] == r1[6], output  # logged losses are all-reduced
    assert [p.name for p in out_dir.iterdir()] == ["model_final.pth"], output  # only rank 0 writes


def test_readme_torchrun_demo_command(tmp_path):
    """The README's `torchrun --nproc_per_node 2 --standalone -m detspec.demo` line, with 3 iterations."""
    out_dir = tmp_path / "demo-ddp"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
                           "-m", "detspec.demo", "--iters", "3", "--out", str(out_dir)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads((out_dir / "metrics.json").read_text())
    assert "AP50: untrained" in proc.stdout
    assert (out_dir / "model_final.pth").exists() and list(out_dir.glob("val_*.png"))
    # the before/after figures are written (3 iterations learn nothing: no AP value is asserted)
    assert metrics["iterations"] == 3 and metrics["world_size"] == 2
    assert {"AP", "AP50"} <= set(metrics["untrained"]) and {"AP", "AP50"} <= set(metrics["trained"])
