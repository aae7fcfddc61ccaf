"""Trainer checkpoints: everything needed to continue a run bit-for-bit.

One safetensors blob per checkpoint: the trainable tensors, the best-so-far tensors,
the optimizer's tensors and the RNG states; everything else (step, schedule, history,
optimizer hyper-parameters) is JSON in the safetensors metadata.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vplab.blobs import safetensors_metadata


@dataclass
class TrainerState:
    step: int
    params: dict[str, torch.Tensor]  # trainable tensors by parameter name
    best: dict[str, torch.Tensor]  # trainable tensors of the best validation step
    optimizer: dict[str, Any]  # torch optimizer state_dict
    scheduler: dict[str, Any]
    torch_rng: torch.Tensor
    sampler_rng: torch.Tensor
    info: dict[str, Any]  # best_val_iou, best_step, history, ...


def encode_state(state: TrainerState) -> bytes:
    tensors: dict[str, torch.Tensor] = {}
    for name, t in state.params.items():
        tensors[f"params.{name}"] = t.detach().cpu().contiguous()
    for name, t in state.best.items():
        tensors[f"best.{name}"] = t.detach().cpu().contiguous()
    opt_state_meta: dict[str, dict[str, Any]] = {}
    for idx, entries in state.optimizer["state"].items():
        opt_state_meta[str(idx)] = {}
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                opt_state_meta[str(idx)][key] = value
    tensors["rng.torch"] = state.torch_rng.contiguous()
    tensors["rng.sampler"] = state.sampler_rng.contiguous()
    meta = {
        "step": state.step,
        "optimizer_param_groups": state.optimizer["param_groups"],
        "optimizer_state_scalars": opt_state_meta,
        "optimizer_state_keys": {str(i): sorted(e) for i, e in state.optimizer["state"].items()},
        "scheduler": state.scheduler,
        "info": state.info,
    }
    return st_save(tensors, metadata={"vplab_trainer_state": json.dumps(meta)})


def decode_state(data: bytes) -> TrainerState:
    tensors = st_load(data)
    meta = json.loads(safetensors_metadata(data)["vplab_trainer_state"])
    params = {k[len("params.") :]: v for k, v in tensors.items() if k.startswith("params.")}
    best = {k[len("best.") :]: v for k, v in tensors.items() if k.startswith("best.")}
    opt_state: dict[int, dict[str, Any]] = {}
    for idx, keys in meta["optimizer_state_keys"].items():
        entry: dict[str, Any] = {}
        for key in keys:
            tkey = f"optim.{idx}.{key}"
            entry[key] = (
                tensors[tkey] if tkey in tensors else meta["optimizer_state_scalars"][idx][key]
            )
        opt_state[int(idx)] = entry
    return TrainerState(
        step=meta["step"],
        params=params,
        best=best,
        optimizer={"state": opt_state, "param_groups": meta["optimizer_param_groups"]},
        scheduler=meta["scheduler"],
        torch_rng=tensors["rng.torch"],
        sampler_rng=tensors["rng.sampler"],
        info=meta["info"],
    )
