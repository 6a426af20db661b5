"""The training demo: a reduced Faster R-CNN trained from scratch on the synthetic shapes, evaluated with COCO AP
before and after.

- ``config``: the reduced model (``DEMO_RCNN``, each deviation from the spec explained) and the schedule;
- ``train``: the training loop (single process or DDP under torchrun), checkpoints, progress lines;
- ``run``: ``run_demo``, the whole demo (val set, evaluation before and after, drawn detections, metrics).

The command is detspec/commands/demo.py; ``python -m detspec.demo`` (what torchrun runs) is the same command.
"""

from detspec.demo.config import DEMO_IMAGE_SIZE, DEMO_MAX_OBJECTS, DEMO_RCNN, DEMO_SCHEDULE, DemoSchedule
from detspec.demo.run import default_threads, draw_detections, evaluate_model, make_val_set, predict, run_demo
from detspec.demo.train import TrainConfig, build_model, train

__all__ = [
    "DEMO_IMAGE_SIZE", "DEMO_MAX_OBJECTS", "DEMO_RCNN", "DEMO_SCHEDULE", "DemoSchedule", "TrainConfig", "build_model",
    "default_threads", "draw_detections", "evaluate_model", "make_val_set", "predict", "run_demo", "train",
]
