"""Few-shot semantic segmentation training of a PEFT method on SAM (METHODS.md section 6).

0.2 x CE + 0.8 x Dice, AdamW, cosine schedule, batch 2, a held-out validation split with
the best checkpoint kept, seeds everywhere. Checkpoints carry optimizer, schedule and RNG
state, so a run resumed from its latest checkpoint ends exactly where an uninterrupted run
would have.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from segment_anything.modeling import Sam

from vplab.errors import InvalidInput
from vplab.masks import iou as mask_iou
from vplab.peft import apply_method, count_trainable, get_method
from vplab.segmentation.predictor import decode_torch
from vplab.segmentation.transforms import apply_coords_torch, postprocess_masks
from vplab.training.augment import views as bank_views
from vplab.training.bank import BankItem, FeatureCache, build_bank
from vplab.training.checkpoint import TrainerState, decode_state, encode_state
from vplab.training.checkpoints import CheckpointStore
from vplab.training.data import LabeledImage, split_train_val, validate_samples
from vplab.training.losses import segmentation_loss
from vplab.training.prompts import sample_points


@dataclass
class TrainConfig:
    method: str = "epeft"
    method_config: dict[str, Any] = field(default_factory=dict)
    steps: int = 200
    batch_size: int = 2
    lr: float | None = None  # None: the method's default_lr
    weight_decay: float = 0.01
    val_fraction: float = 0.2
    seed: int = 0
    eval_every: int = 25
    checkpoint_every: int = 50
    n_dihedral: int = 8  # views in the augmentation bank
    n_photometric: int = 2
    max_pos_points: int = 3
    max_neg_points: int = 2

    def validate(self) -> None:
        get_method(self.method)  # unknown method -> InvalidInput
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"{name} must be > 0, got {getattr(self, name)}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise InvalidInput(f"lr must be a positive number, got {self.lr}")
        if not 0 <= self.val_fraction < 1:
            raise InvalidInput("val_fraction must be in [0, 1)")


@dataclass
class ProgressEvent:
    phase: str  # "bank" | "train" | "done" | "cancelled"
    step: int
    total_steps: int
    loss: float | None = None
    val_iou: float | None = None
    best_val_iou: float | None = None
    elapsed_s: float = 0.0
    eta_s: float | None = None


@dataclass
class TrainResult:
    model: Sam  # the tuned model with the best validation weights loaded
    method_config: Any
    steps_done: int
    initial_val_iou: float
    best_val_iou: float
    best_step: int
    trainable_params: int
    train_s: float
    cancelled: bool
    val_on_train: bool  # no held-out image was available
    history: list[dict[str, float]]


class Trainer:
    def __init__(
        self,
        sam: Sam,
        config: TrainConfig,
        samples: list[LabeledImage],
        checkpoints: CheckpointStore | None = None,
        on_progress: Callable[[ProgressEvent], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        feature_cache: FeatureCache | None = None,
    ):
        config.validate()
        validate_samples(samples)
        self.sam = sam
        self.config = config
        self.spec = get_method(config.method)
        self.samples = samples
        self.checkpoints = checkpoints
        self.on_progress = on_progress or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        self.feature_cache = feature_cache
        self.device = sam.pixel_mean.device

    # -- setup ---------------------------------------------------------------------
    def _prepare(self) -> None:
        cfg = self.config
        torch.manual_seed(cfg.seed)  # adapter initialisation is part of the run's seed
        self.method_config = apply_method(self.sam, cfg.method, dict(cfg.method_config))
        self.start_block = getattr(self.method_config, "start_block", 0)
        self.sam.to(self.device)
        self.params = {n: p for n, p in self.sam.named_parameters() if p.requires_grad}
        if not self.params:
            raise InvalidInput(f"method {cfg.method!r} left nothing trainable")
        train, val = split_train_val(self.samples, cfg.val_fraction, cfg.seed)
        self.val_on_train = not val
        self.val = val or train
        mode = self.spec.encoder_mode

        def bank_progress(i: int, n: int) -> None:
            if i == n or i % max(1, n // 4) == 0:  # a few events, not one per view
                self.on_progress(
                    ProgressEvent("bank", 0, cfg.steps, elapsed_s=time.monotonic() - self.t0)
                )

        self.bank = build_bank(
            self.sam,
            train,
            bank_views(cfg.n_dihedral, cfg.n_photometric),
            mode,
            self.start_block,
            self.feature_cache,
            bank_progress,
        )
        self.val_bank = build_bank(
            self.sam, self.val, bank_views(1, 0), mode, self.start_block, self.feature_cache
        )
        self.optimizer = torch.optim.AdamW(
            list(self.params.values()),
            lr=cfg.lr or self.spec.default_lr,
            weight_decay=cfg.weight_decay,
        )
        total = cfg.steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
        )
        self.sampler = torch.Generator().manual_seed(cfg.seed)

    # -- model pieces ----------------------------------------------------------------
    def _embedding(self, item: BankItem) -> torch.Tensor:
        enc = self.sam.image_encoder
        x = item.feature.to(self.device)
        mode = self.spec.encoder_mode
        if mode == "frozen":
            return x
        if mode == "full":
            return enc(x)
        for blk in enc.blocks[self.start_block :]:
            x = blk(x)
        return enc.neck(x.permute(0, 3, 1, 2))

    def _decode(
        self, item: BankItem, embedding: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Low-res logits (1, 1, L, L) for one item."""
        if self.spec.prompt_free:
            from vplab.peft.ptsam import ptsam_decode

            return ptsam_decode(self.sam, embedding)
        coords, labels = sample_points(
            item.label, generator, self.config.max_pos_points, self.config.max_neg_points
        )
        coords = apply_coords_torch(coords, item.original_size, self.sam.image_encoder.img_size)
        logits, _ = decode_torch(
            self.sam,
            embedding,
            coords[None].to(self.device),
            labels[None].to(self.device),
            multimask_output=False,
        )
        return logits

    def _valid_lowres(self, item: BankItem, lowres: int) -> tuple[int, int]:
        size = self.sam.image_encoder.img_size
        return (
            math.ceil(item.input_size[0] * lowres / size),
            math.ceil(item.input_size[1] * lowres / size),
        )

    def _loss(self, items: list[BankItem]) -> torch.Tensor:
        losses = []
        for item in items:
            # One decoder call per item: the decoder repeats the image embedding per prompt set.
            logits = self._decode(item, self._embedding(item), self.sampler)[:, 0]
            h, w = self._valid_lowres(item, logits.shape[-1])
            target = item.target.to(self.device)
            losses.append(segmentation_loss(logits[:, :h, :w].float(), target[:, :h, :w]))
        return torch.stack(losses).mean()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean IoU on the validation images, with fixed prompts (same every evaluation)."""
        was_training = self.sam.training
        self.sam.eval()
        generator = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        ious = []
        for item in self.val_bank:
            with self._autocast():
                logits = self._decode(item, self._embedding(item), generator)
            masks = postprocess_masks(
                logits.float(), item.input_size, item.original_size, self.sam.image_encoder.img_size
            )
            ious.append(mask_iou((masks[0, 0] > 0).cpu().numpy(), item.label.numpy()))
        self.sam.train(was_training)
        return float(sum(ious) / len(ious))

    def _autocast(self):
        return torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda")

    # -- state -----------------------------------------------------------------------
    def _state(self, step: int, info: dict[str, Any]) -> TrainerState:
        return TrainerState(
            step=step,
            params={n: p.detach() for n, p in self.params.items()},
            best=self.best,
            optimizer=self.optimizer.state_dict(),
            scheduler=self.scheduler.state_dict(),
            torch_rng=torch.get_rng_state(),
            sampler_rng=self.sampler.get_state(),
            info=info,
        )

    def _restore(self, state: TrainerState) -> None:
        if set(state.params) != set(self.params):
            raise InvalidInput("checkpoint does not match this method's trainable parameters")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state.params[n])
        self.best = {n: t.clone() for n, t in state.best.items()}
        self.optimizer.load_state_dict(state.optimizer)
        self.scheduler.load_state_dict(state.scheduler)
        torch.set_rng_state(state.torch_rng)
        self.sampler.set_state(state.sampler_rng)

    # -- the loop --------------------------------------------------------------------
    def run(self) -> TrainResult:
        cfg = self.config
        self.t0 = time.monotonic()
        self._prepare()
        self.best = {n: p.detach().clone() for n, p in self.params.items()}
        info: dict[str, Any] = {"history": []}
        start = 0
        latest = self.checkpoints.latest() if self.checkpoints else None
        if latest is not None:
            state = decode_state(latest[1])
            self._restore(state)
            start, info = state.step, state.info
        else:
            initial = self.evaluate()
            info.update(initial_val_iou=initial, best_val_iou=initial, best_step=0)
        self.sam.train()
        t_loop = time.monotonic()
        loss_value = None
        cancelled = False
        step = start
        while step < cfg.steps:
            if self.should_stop():
                cancelled = True
                break
            idx = torch.randint(0, len(self.bank), (cfg.batch_size,), generator=self.sampler)
            with self._autocast():
                loss = self._loss([self.bank[i] for i in idx.tolist()])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            step += 1
            loss_value = float(loss.detach())
            val_iou = None
            if step % cfg.eval_every == 0 or step == cfg.steps:
                val_iou = self.evaluate()
                info["history"].append({"step": step, "loss": loss_value, "val_iou": val_iou})
                if val_iou > info["best_val_iou"]:
                    info.update(best_val_iou=val_iou, best_step=step)
                    self.best = {n: p.detach().clone() for n, p in self.params.items()}
            if self.checkpoints and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                self.checkpoints.save(step, encode_state(self._state(step, info)))
            rate = (step - start) / max(time.monotonic() - t_loop, 1e-9)
            self.on_progress(
                ProgressEvent(
                    "train",
                    step,
                    cfg.steps,
                    loss_value,
                    val_iou,
                    info["best_val_iou"],
                    time.monotonic() - self.t0,
                    (cfg.steps - step) / rate if rate > 0 else None,
                )
            )
        if cancelled and self.checkpoints:
            self.checkpoints.save(step, encode_state(self._state(step, info)))
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(self.best[n])
        self.sam.eval()
        elapsed = time.monotonic() - self.t0
        self.on_progress(
            ProgressEvent(
                "cancelled" if cancelled else "done",
                step,
                cfg.steps,
                loss_value,
                None,
                info["best_val_iou"],
                elapsed,
                0.0,
            )
        )
        return TrainResult(
            model=self.sam,
            method_config=self.method_config,
            steps_done=step,
            initial_val_iou=info["initial_val_iou"],
            best_val_iou=info["best_val_iou"],
            best_step=info["best_step"],
            trainable_params=count_trainable(self.sam),
            train_s=elapsed,
            cancelled=cancelled,
            val_on_train=self.val_on_train,
            history=info["history"],
        )


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
