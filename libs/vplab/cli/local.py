"""Local, single-machine commands: segment, visual-prompt, train, predict."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

from vplab.cli.models import add_model_args, base_sam, dino_model
from vplab.errors import InvalidInput


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment one image from point/box prompts")
    p.add_argument("image")
    p.add_argument(
        "--points",
        nargs="*",
        default=[],
        metavar="X,Y[,LABEL]",
        help="prompt points in pixels; LABEL 1 = object (default), 0 = background",
    )
    p.add_argument("--box", metavar="X0,Y0,X1,Y1")
    p.add_argument(
        "--multimask", action="store_true", help="let SAM propose 3 masks, keep the best"
    )
    p.add_argument("--out", required=True, help="output mask PNG (0/255)")
    add_model_args(p)
    p.set_defaults(func=run_segment)

    p = sub.add_parser(
        "visual-prompt", help="segment a folder of images from reference image(s) + mask(s)"
    )
    p.add_argument(
        "--ref", action="append", required=True, help="reference image (repeat for K shots)"
    )
    p.add_argument(
        "--ref-mask", action="append", required=True, help="reference mask PNG, one per --ref"
    )
    p.add_argument("--targets", required=True, help="directory of target images")
    p.add_argument("--out", required=True, help="output directory for masks")
    p.add_argument("--matcher", choices=["soft", "prototype"], default="soft")
    p.add_argument("--adapter", help="use a tuned decoder (adapter directory from `vplab train`)")
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p, dino=True)
    p.set_defaults(func=run_visual_prompt)

    p = sub.add_parser(
        "evaluate",
        help="score predicted masks / label maps against ground truth (mIoU, Dice per class)",
        description="Score the PNGs of --pred against the same-named PNGs of --gt: per-class "
        "IoU and Dice over all images, their means over classes 1..K, and per-image scores. "
        "E.g. `vplab visual-prompt ... --out pred/` then `vplab evaluate --pred pred --gt masks`.",
    )
    p.add_argument("--pred", required=True, help="directory of predicted mask / label-map PNGs")
    p.add_argument("--gt", required=True, help="directory of ground-truth PNGs (same names)")
    p.add_argument("--classes", type=int, help="K: score classes 1..K (default: every id seen)")
    p.add_argument("--json", action="store_true", help="print only the JSON report")
    p.set_defaults(func=run_evaluate)

    p = sub.add_parser("train", help="fine-tune SAM with a PEFT method on labelled images")
    p.add_argument("--method", default="epeft", help="PEFT method (see `vplab peft list`)")
    p.add_argument("--images", required=True)
    p.add_argument("--labels", required=True, help="label PNGs named like the images (>0 = object)")
    p.add_argument("--base", metavar="CHECKPOINT", help="official SAM checkpoint (same as --sam)")
    p.add_argument("--out", required=True, help="adapter output directory")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float)
    p.add_argument("--recipe", help="a named training recipe of the method (`vplab peft describe`)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--config", default="{}", help="method config overrides as JSON")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--eval-every", type=int, default=25)
    p.add_argument(
        "--views", type=int, default=8, help="dihedral views per image in the bank (1-8)"
    )
    p.add_argument(
        "--resume", action="store_true", help="continue from the last checkpoint of --out"
    )
    add_model_args(p)
    p.set_defaults(func=run_train)

    p = sub.add_parser("predict", help="predict masks with a tuned adapter")
    p.add_argument("--adapter", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--out", required=True)
    p.add_argument(
        "--ref", action="append", help="reference image(s) for prompted methods (E-PEFT...)"
    )
    p.add_argument("--ref-mask", action="append")
    p.add_argument("--seed", type=int, default=0)
    add_model_args(p, dino=True)
    p.set_defaults(func=run_predict)


# -- helpers ------------------------------------------------------------------------------
def _parse_floats(text: str, n: tuple[int, ...], what: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise InvalidInput(f"{what} {text!r}: expected comma-separated numbers") from None
    if len(values) not in n:
        raise InvalidInput(f"{what} {text!r}: expected {' or '.join(map(str, n))} numbers")
    return values


def _image_files(directory: str) -> list[Path]:
    from vplab.training.data import IMAGE_SUFFIXES

    d = Path(directory)
    if not d.is_dir():
        raise InvalidInput(f"directory {directory!r} does not exist")
    files = [p for p in sorted(d.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise InvalidInput(f"no images in {directory!r}")
    return files


def _write_png(path: Path, array: np.ndarray) -> None:
    from vplab.images import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encode_png(array))
    tmp.replace(path)


def _references(args: argparse.Namespace) -> list[tuple[np.ndarray, np.ndarray]]:
    from vplab.images import read_image
    from vplab.masks import read_binary_mask

    refs, masks = args.ref or [], args.ref_mask or []
    if len(refs) != len(masks):
        raise InvalidInput(
            f"{len(refs)} --ref image(s) but {len(masks)} --ref-mask file(s): give one mask per image"
        )
    out = []
    for ref, mask_path in zip(refs, masks):
        image, mask = read_image(ref), read_binary_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise InvalidInput(
                f"reference mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} but {ref} is "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        if not mask.any():
            raise InvalidInput(f"reference mask {mask_path} is empty")
        out.append((image, mask))
    return out


# -- commands -----------------------------------------------------------------------------
def run_segment(args: argparse.Namespace) -> int:
    from vplab.images import read_image
    from vplab.segmentation import PromptSegmenter

    points = [_parse_floats(p, (2, 3), "point") for p in args.points]
    box = _parse_floats(args.box, (4,), "box") if args.box else None
    if not points and box is None:
        raise InvalidInput("give at least one --points X,Y or a --box")
    image = read_image(args.image)
    segmenter = PromptSegmenter(base_sam(args).build())
    emb = segmenter.embed_images([image])[0]  # a large image: its tiles
    coords = np.array([[p[:2] for p in points]], dtype=np.float32) if points else None
    labels = np.array([[int(p[2]) if len(p) == 3 else 1 for p in points]]) if points else None
    boxes = np.array([box], dtype=np.float32) if box else None
    result = segmenter.decode(emb, coords, labels, boxes=boxes, multimask_output=args.multimask)
    best = int(result.iou_predictions[0].argmax())
    mask = result.masks[0, best].cpu().numpy()
    _write_png(Path(args.out), mask.astype(np.uint8) * 255)
    print(
        f"wrote {args.out}: {int(mask.sum())} pixels, predicted IoU {float(result.iou_predictions[0, best]):.3f}"
    )
    return 0


def _visual_prompter(args: argparse.Namespace, sam, output: str | None = None):
    """``output``: a tuned model's trained decoder output (None: the base model's)."""
    from vplab.matching import VisualPromptConfig, VisualPrompter
    from vplab.segmentation import PromptSegmenter
    from vplab.segmentation.predictor import BASE_OUTPUT

    config = VisualPromptConfig(matcher=getattr(args, "matcher", "soft"), seed=args.seed)
    segmenter = PromptSegmenter(sam, output=output or BASE_OUTPUT)
    return VisualPrompter(segmenter, dino_model(args), config)


def _predict_folder(prompter, files: list[Path], out: Path) -> None:
    from vplab.images import read_image

    out.mkdir(parents=True, exist_ok=True)
    for path in tqdm(files, desc="visual prompting", unit="img", file=sys.stderr):
        result = prompter.predict(read_image(path))
        _write_png(out / f"{path.stem}.png", (result.label_map > 0).numpy().astype(np.uint8) * 255)


def run_visual_prompt(args: argparse.Namespace) -> int:
    refs = _references(args)
    files = _image_files(args.targets)
    if args.adapter:
        sam, _ = _load_tuned(args)
    else:
        sam = base_sam(args).build()
    prompter = _visual_prompter(args, sam)
    prompter.set_references(refs)
    _predict_folder(prompter, files, Path(args.out))
    print(f"wrote {len(files)} masks to {args.out}")
    return 0


def run_train(args: argparse.Namespace) -> int:
    from vplab.peft.adapter_io import save_adapter
    from vplab.storage import LocalStore
    from vplab.training import CheckpointStore, TrainConfig, Trainer, load_labeled_dir

    if args.base and not args.sam:
        args.sam = args.base
    try:
        overrides = json.loads(args.config)
    except json.JSONDecodeError as e:
        raise InvalidInput(f"--config is not valid JSON: {e}") from None
    config = TrainConfig(
        method=args.method,
        method_config=overrides,
        steps=args.steps,
        lr=args.lr,
        recipe=args.recipe,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        eval_every=args.eval_every,
        n_dihedral=args.views,
    )
    config.validate()  # before anything is read or written
    samples = load_labeled_dir(args.images, args.labels)
    base = base_sam(args)
    out = Path(args.out)
    ckpt_dir = out.with_name(f".{out.name}.checkpoints")
    if not args.resume and ckpt_dir.exists():
        shutil.rmtree(ckpt_dir)
    bar = tqdm(total=config.steps, desc=f"train {config.method}", unit="step", file=sys.stderr)

    def progress(event) -> None:
        if event.phase == "train":
            bar.n = event.step
            post = {"loss": f"{event.loss:.3f}"}
            if event.best_val_iou is not None:
                post["best_val_iou"] = f"{event.best_val_iou:.3f}"
            bar.set_postfix(post, refresh=True)

    trainer = Trainer(
        base.build(),
        config,
        samples,
        checkpoints=CheckpointStore(LocalStore(ckpt_dir), "local", "train"),
        on_progress=progress,
    )
    result = trainer.run()
    bar.close()
    save_adapter(result.model, out, config.method, result.method_config, base.ref(), result.output)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    print(
        f"validation IoU {result.initial_val_iou:.3f} -> {result.best_val_iou:.3f} (best at step "
        f"{result.best_step}); {result.trainable_params} trainable parameters; {result.train_s:.1f} s"
    )
    print(f"wrote adapter to {out}")
    return 0


def _load_tuned(args: argparse.Namespace):
    """(tuned SAM, adapter config dict) for ``--adapter``; the base comes from its config."""
    from vplab.models.base import resolve_base_sam
    from vplab.peft.adapter_io import load_adapter, read_adapter_config

    cfg = read_adapter_config(args.adapter)
    name = cfg["base"]["name"]
    if name in ("sam_tiny", "sam_mini"):  # seeded / embedded: no checkpoint to give
        base = resolve_base_sam(name)
    elif args.sam:
        base = resolve_base_sam(name, args.sam, args.sam_sha256)
    else:
        raise InvalidInput(f"the adapter was trained on {name}: give its checkpoint with --sam")
    sam, _ = load_adapter(args.adapter, base.build(), base.sha256)
    return sam, cfg


def run_predict(args: argparse.Namespace) -> int:
    from vplab.images import read_image
    from vplab.peft import get_method
    from vplab.peft.adapter_io import adapter_output

    sam, cfg = _load_tuned(args)
    files = _image_files(args.images)
    out = Path(args.out)
    if get_method(cfg["method"]).prompt_free:
        from vplab.segmentation.prompt_free import prompt_free_segment

        out.mkdir(parents=True, exist_ok=True)
        for path in tqdm(files, desc="predict", unit="img", file=sys.stderr):
            mask = prompt_free_segment(sam, read_image(path), adapter_output(cfg))
            _write_png(out / f"{path.stem}.png", mask.astype(np.uint8) * 255)
    else:
        if not args.ref:
            raise InvalidInput(
                f"method {cfg['method']!r} is prompted: give --ref IMAGE --ref-mask MASK"
            )
        args.demo = args.demo or cfg["base"]["name"] in ("sam_tiny", "sam_mini")
        prompter = _visual_prompter(args, sam, adapter_output(cfg))
        prompter.set_references(_references(args))
        _predict_folder(prompter, files, out)
    print(f"wrote {len(files)} masks to {out}")
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from vplab.evaluation import evaluate_folders

    report = evaluate_folders(args.pred, args.gt, args.classes)
    if not args.json:
        print(f"{report.n_images} images: mIoU {report.miou:.4f}, mean Dice {report.mean_dice:.4f}")
        for class_id, score in report.per_class.items():
            print(f"  class {class_id}: IoU {score.iou:.4f}  Dice {score.dice:.4f}")
    print(json.dumps(report.to_json()))
    return 0
