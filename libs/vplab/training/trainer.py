"""Few-shot semantic segmentation training of a PEFT method on SAM (METHODS.md section 6).

0.2 x CE + 0.8 x Dice, AdamW, cosine schedule, batch 2, the best checkpoint kept, seeds
everywhere - the default recipe; a method's named recipes (``Recipe``: e.g. micro-sam's
Dice-only loss, iterative prompting and plateau schedule) change those. Checkpoints carry optimizer, schedule and RNG state, so a run resumed from its
latest checkpoint ends exactly where an uninterrupted run would have.

Train what we deploy (#12): the trainer trains the decoder output the tuned model is
served through (``Recipe.output``: token 0, or the three multimask outputs with the
min-over-masks loss), regresses the IoU head onto the true IoU of what it trained (the
pipeline scores masks with it), draws prompts of the form visual prompting sends (one
positive + 2 negatives, target = the label's component under the positive), and validates
through the serving code path (``decode_class`` on the tuned ``PromptSegmenter``).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam

from vplab.errors import InvalidInput
from vplab.masks import iou as mask_iou
from vplab.peft import apply_method, count_trainable, get_method
from vplab.peft.registry import DECODER_OUTPUTS
from vplab.segmentation.embedding import ImageEmbedding
from vplab.segmentation.predictor import decode_torch, output_selection
from vplab.segmentation.transforms import apply_coords_torch, postprocess_masks
from vplab.training.augment import random_view
from vplab.training.augment import views as bank_views
from vplab.training.bank import BankItem, FeatureCache, build_bank, make_item
from vplab.training.checkpoint import TrainerState, decode_state, encode_state
from vplab.training.checkpoints import CheckpointStore
from vplab.training.data import LabeledImage, split_train_val, validate_samples
from vplab.training.losses import segmentation_loss
from vplab.training.prompts import corrective_points, sample_prompt, validation_prompts
from vplab.training.validation import served_mask


@dataclass
class TrainConfig:
    """A training run. ``None`` fields come from the method's ``Recipe`` (``resolved``)."""

    method: str = "epeft"
    method_config: dict[str, Any] = field(default_factory=dict)
    recipe: str | None = None  # a named recipe of the method (None: its default)
    steps: int | None = None
    batch_size: int = 2
    lr: float | None = None
    weight_decay: float | None = None  # on matrices; vectors (biases, scales) never decay
    output: str | None = None  # the decoder output trained and served (DecoderOutput)
    augmentation: str | None = None  # "bank" | "online" (encoder in the loop only)
    val_fraction: float = 0.2  # only with >= MIN_IMAGES_FOR_HOLDOUT images (data.py)
    seed: int = 0
    eval_every: int = 25
    checkpoint_every: int = 50
    n_dihedral: int = 8  # views in the augmentation bank
    n_photometric: int = 2
    num_negatives: int = 2  # per training prompt, as visual prompting sends them

    def validate(self) -> None:
        spec = get_method(self.method)  # unknown method -> InvalidInput
        spec.recipe_named(self.recipe)  # unknown recipe -> InvalidInput
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise InvalidInput(f"{name} must be > 0, got {value}")
        for name in ("lr", "weight_decay"):
            value = getattr(self, name)
            bad = value is not None and (
                not math.isfinite(value) or value < 0 or (name == "lr" and value == 0)
            )
            if bad:
                raise InvalidInput(f"{name} must be a non-negative number (lr > 0), got {value}")
        if not 0 <= self.val_fraction < 1:
            raise InvalidInput("val_fraction must be in [0, 1)")
        if self.num_negatives < 0:
            raise InvalidInput("num_negatives must be >= 0")
        if self.output is not None:
            if self.output not in DECODER_OUTPUTS:
                raise InvalidInput(
                    f"output must be one of {list(DECODER_OUTPUTS)}, got {self.output!r}"
                )
            if spec.prompt_free and self.output == "best_of_3":
                raise InvalidInput(f"{self.method} is prompt-free: output 'token0' or 'token1'")
        if self.augmentation not in (None, "bank", "online"):
            raise InvalidInput(
                f"augmentation must be 'bank' or 'online', got {self.augmentation!r}"
            )
        if self.augmentation == "online" and spec.encoder_mode != "full":
            raise InvalidInput(
                f"online augmentation needs the encoder in the loop; {self.method} trains from "
                "cached features (use 'bank')"
            )

    def resolved(self) -> TrainConfig:
        """A copy with every ``None`` filled from the method's recipe."""
        self.validate()
        recipe = get_method(self.method).recipe_named(self.recipe)
        return dataclasses.replace(
            self,
            method_config=dict(self.method_config),
            recipe=recipe.name,
            steps=self.steps or recipe.steps,
            lr=self.lr or recipe.lr,
            weight_decay=recipe.weight_decay if self.weight_decay is None else self.weight_decay,
            output=self.output or recipe.output,
            augmentation=self.augmentation or recipe.augmentation,
        )


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
    output: str  # the decoder output trained, which serving must use (save it with the model)
    trained_on: list[str] = field(default_factory=list)  # the images of the training split


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
        config = config.resolved()
        validate_samples(samples)
        self.sam = sam
        self.config = config
        # the recipe-resolved values, typed
        self.steps, self.lr = int(config.steps or 0), float(config.lr or 0.0)
        self.weight_decay, self.output = float(config.weight_decay or 0.0), str(config.output)
        self.spec = get_method(config.method)
        self.recipe = self.spec.recipe_named(config.recipe)  # loss, prompting, schedule
        self.samples = samples
        self.checkpoints = checkpoints
        self.on_progress = on_progress or (lambda e: None)
        self.should_stop = should_stop or (lambda: False)
        self.feature_cache = feature_cache
        self.device = sam.pixel_mean.device
        self.t0 = time.monotonic()

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
        self.online = cfg.augmentation == "online"
        self.samples_by_name = {s.name: s for s in train}

        def bank_progress(i: int, n: int) -> None:
            if i == n or i % max(1, n // 4) == 0:  # a few events, not one per view
                self.on_progress(
                    ProgressEvent("bank", 0, self.steps, elapsed_s=time.monotonic() - self.t0)
                )

        self.bank = build_bank(
            self.sam,
            train,
            # online: fresh views every step; the bank only indexes the images
            bank_views(1, 0) if self.online else bank_views(cfg.n_dihedral, cfg.n_photometric),
            mode,
            self.start_block,
            self.feature_cache,
            bank_progress,
        )
        self.val_bank = build_bank(
            self.sam, self.val, bank_views(1, 0), mode, self.start_block, self.feature_cache
        )
        self.val_prompts = [validation_prompts(item.label) for item in self.val_bank]
        # AdamW's decay pulls a parameter towards 0: right for weight matrices, wrong for
        # vectors initialised at 1 (IA3 and SSF scales, LayerNorm weights) or 0 (biases,
        # shifts), whose identity is their init. Vectors are not decayed (timm/nanoGPT do
        # the same).
        matrices: list[torch.Tensor] = [p for p in self.params.values() if p.ndim >= 2]
        vectors: list[torch.Tensor] = [p for p in self.params.values() if p.ndim < 2]
        self.optimizer = torch.optim.AdamW(
            [
                {"params": matrices, "weight_decay": self.weight_decay},
                {"params": vectors, "weight_decay": 0.0},
            ],
            lr=self.lr,
        )
        total = self.steps
        self.scheduler: Any
        if self.recipe.schedule == "plateau":  # stepped on each validation's IoU
            self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode="max",
                factor=self.recipe.plateau_factor,
                patience=self.recipe.plateau_patience,
            )
        else:
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

    def _component_target(self, item: BankItem, coords: torch.Tensor) -> torch.Tensor:
        """(1, L, L): the low-res target restricted to the component under ``coords[0]``
        (the positive, in the resized img_size frame)."""
        target = item.target
        comps, n = item.components()
        if n <= 1:
            return target
        lowres = target.shape[-1]
        scale = lowres / self.sam.image_encoder.img_size
        x = min(int(coords[0, 0] * scale), lowres - 1)
        y = min(int(coords[0, 1] * scale), lowres - 1)
        k = int(comps[y, x])
        return target if k == 0 else target * (comps == k)[None]

    def _rounds(
        self, item: BankItem, embedding: torch.Tensor, generator: torch.Generator
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Per prompting round: (low-res logits (1, M, L, L) of the trained output(s), their
        predicted IoU (1, M) or None when prompt-free, the target (1, L, L)).

        Round 0 is the prompt visual prompting sends, decoded through the output the model
        is served through; each of the recipe's ``corrective_rounds`` then adds a positive
        in the misses and a negative in the leaks of the previous round's best mask, whose
        logits go back in as ``mask_input`` with the recipe's probability (iterative
        prompting, micro-sam's form), and decodes token 0: with several points SAM is used
        with one output, and SAM and micro-sam train it that way.
        """
        if self.spec.prompt_free:
            from vplab.segmentation.prompt_free import prompt_free_decode

            yield prompt_free_decode(self.sam, embedding, self.output), None, item.target
            return
        size = self.sam.image_encoder.img_size
        coords, labels = sample_prompt(item.label, generator, self.config.num_negatives)
        coords = apply_coords_torch(coords, item.original_size, size)
        target = self._component_target(item, coords) if labels[0] == 1 else item.target
        coords, labels = coords[None].to(self.device), labels[None].to(self.device)
        mask_input = None
        for r in range(1 + self.recipe.corrective_rounds):
            multimask, keep = output_selection(self.output if r == 0 else "token0")
            logits, iou_pred = decode_torch(
                self.sam,
                embedding,
                coords,
                labels,
                mask_input=mask_input,
                multimask_output=multimask,
            )
            logits, iou_pred = logits[:, keep], iou_pred[:, keep]
            yield logits, iou_pred, target
            if r == self.recipe.corrective_rounds:
                return
            with torch.no_grad():
                best = int(iou_pred.argmax(1)) if logits.shape[1] > 1 else 0
                previous = logits[:, best : best + 1].detach()  # (1, 1, L, L)
                h, w = self._valid_lowres(item, logits.shape[-1])
                xy, new_labels = corrective_points(
                    previous[0, 0, :h, :w] > 0, target[0, :h, :w].to(self.device) > 0.5, generator
                )
                xy = xy * (size / logits.shape[-1])  # low-res cell centres -> img_size frame
                feed = float(torch.rand(1, generator=generator)) < self.recipe.mask_input_prob
                mask_input = previous if feed else None
            coords = torch.cat([coords, xy.to(coords)[None]], dim=1)
            labels = torch.cat([labels, new_labels.to(labels)[None]], dim=1)

    def _valid_lowres(self, item: BankItem, lowres: int) -> tuple[int, int]:
        size = self.sam.image_encoder.img_size
        return (
            math.ceil(item.input_size[0] * lowres / size),
            math.ceil(item.input_size[1] * lowres / size),
        )

    def _train_item(self, item: BankItem) -> BankItem:
        if not self.online:
            return item
        sample = self.samples_by_name[item.name]
        image, label = random_view(sample.image, sample.label)
        return make_item(self.sam, sample.name, "online", image, label, "full")

    def _output_loss(
        self, logits: torch.Tensor, iou_pred: torch.Tensor | None, target: torch.Tensor, item
    ) -> torch.Tensor:
        """The mask loss of the best output (min over the multimask outputs; one output:
        itself) plus MSE of the IoU head onto the true IoU of every output."""
        h, w = self._valid_lowres(item, logits.shape[-1])
        logits = logits[..., :h, :w].float()
        target = target.to(self.device)[:, :h, :w]
        ce_weight, dice_weight = (0.0, 1.0) if self.recipe.loss == "dice" else (0.2, 0.8)
        per_output = torch.stack(
            [
                segmentation_loss(logits[:, m], target, ce_weight, dice_weight)
                for m in range(logits.shape[1])
            ]
        )
        loss = per_output.min()
        if iou_pred is not None:
            with torch.no_grad():  # the IoU head learns the true IoU of each output
                hard, gt = logits > 0, (target > 0.5)[:, None]
                inter = (hard & gt).flatten(2).sum(-1).float()
                union = (hard | gt).flatten(2).sum(-1).float()
                true_iou = torch.where(union > 0, inter / union.clamp(min=1), 1.0)
            loss = loss + F.mse_loss(iou_pred.float(), true_iou)
        return loss

    def _loss(self, items: list[BankItem]) -> torch.Tensor:
        losses = []
        for item in items:
            item = self._train_item(item)
            # One decoder call per item and round: the decoder repeats the image embedding
            # per prompt set. Iterative prompting averages its rounds.
            rounds = [
                self._output_loss(logits, iou_pred, target, item)
                for logits, iou_pred, target in self._rounds(
                    item, self._embedding(item), self.sampler
                )
            ]
            losses.append(torch.stack(rounds).mean())
        return torch.stack(losses).mean()

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean IoU on the validation images through the serving code path: the tuned
        model's ``PromptSegmenter`` (its served output) and ``decode_class`` (scores,
        threshold, NMS, union) with the fixed prompts of ``validation_prompts``; prompt-free
        methods through ``prompt_free_decode`` with the served output token (``served_mask``)."""
        from vplab.segmentation import PromptSegmenter

        was_training = self.sam.training
        self.sam.eval()
        ious = []
        segmenter = None if self.spec.prompt_free else PromptSegmenter(self.sam, output=self.output)
        for item, points in zip(self.val_bank, self.val_prompts):
            with self._autocast():
                embedding = self._embedding(item)
            if segmenter is None:
                from vplab.segmentation.prompt_free import prompt_free_decode

                with self._autocast():
                    logits = prompt_free_decode(self.sam, embedding, self.output)
                size = self.sam.image_encoder.img_size
                masks = postprocess_masks(logits.float(), item.input_size, item.original_size, size)
                pred = (masks[0, 0] > 0).cpu()
            else:
                emb = ImageEmbedding(embedding.float(), item.original_size, item.input_size)
                pred = served_mask(segmenter, emb, points).cpu()
            ious.append(mask_iou(pred.numpy(), item.label.numpy()))
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
        while step < self.steps:
            if self.should_stop():
                cancelled = True
                break
            idx = torch.randint(0, len(self.bank), (cfg.batch_size,), generator=self.sampler)
            with self._autocast():
                loss = self._loss([self.bank[i] for i in idx.tolist()])
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            if self.recipe.schedule == "cosine":
                self.scheduler.step()
            step += 1
            loss_value = float(loss.detach())
            val_iou = None
            if step % cfg.eval_every == 0 or step == self.steps:
                val_iou = self.evaluate()
                if self.recipe.schedule == "plateau":
                    self.scheduler.step(val_iou)
                info["history"].append({"step": step, "loss": loss_value, "val_iou": val_iou})
                if val_iou > info["best_val_iou"]:
                    info.update(best_val_iou=val_iou, best_step=step)
                    self.best = {n: p.detach().clone() for n, p in self.params.items()}
            if self.checkpoints and (step % cfg.checkpoint_every == 0 or step == self.steps):
                self.checkpoints.save(step, encode_state(self._state(step, info)))
            rate = (step - start) / max(time.monotonic() - t_loop, 1e-9)
            self.on_progress(
                ProgressEvent(
                    "train",
                    step,
                    self.steps,
                    loss_value,
                    val_iou,
                    info["best_val_iou"],
                    time.monotonic() - self.t0,
                    (self.steps - step) / rate if rate > 0 else None,
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
                self.steps,
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
            output=self.output,
            trained_on=sorted({s.source for s in self.samples_by_name.values()}),
        )


def config_dict(config: TrainConfig) -> dict[str, Any]:
    return asdict(config)
