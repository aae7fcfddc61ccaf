"""Few-shot training of PEFT methods on SAM (usable without any service)."""

from vplab.training.checkpoints import CheckpointStore
from vplab.training.data import LabeledImage, load_labeled_dir, split_train_val
from vplab.training.trainer import ProgressEvent, TrainConfig, Trainer, TrainResult

__all__ = [
    "CheckpointStore",
    "LabeledImage",
    "ProgressEvent",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "load_labeled_dir",
    "split_train_val",
]
