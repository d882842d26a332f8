"""Adversarial training of MSA-Net (paper "Loss function" / Table 3; MODEL.md A8, A9, A13).

Per batch: one critic step on the generator's detached outputs (``L(D) = 1 − L_adv``, then SegAN
weight clipping), then one generator step (``L(G) = αL_seg + βL_adv``), separate Adam optimisers.
Data: the ``.npz`` format of :mod:`msanet_core.dataset` (``train/`` and, if present, ``val/``).

Exact resume: shuffling and augmentation of epoch ``e`` draw from ``numpy.random.default_rng(
[seed, e])``, and ``last.pt`` carries both optimiser states, the epoch, the torch RNG state and the
history, so training N epochs equals training k, resuming, and training N − k (on CPU).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import torch

from msanet_core.checkpoint import load_checkpoint, load_state, plain, save_checkpoint
from msanet_core.config import ModelConfig
from msanet_core.critic import SegANCritic, build_critic, critic_input
from msanet_core.generator import MSANetGenerator, build_generator
from msanet_core.inference import resolve_device
from msanet_core.losses import (
    adversarial_loss,
    critic_loss,
    dice_loss,
    generator_loss,
    lesion_weights,
    segmentation_loss,
)
from msanet_core.metrics import pixel_metrics
from msanet_core.training_data import CropSet, augment_batch, load_split

logger = logging.getLogger(__name__)

LOG_FIELDS = (
    "epoch",
    "lr",
    "loss_g",
    "loss_d",
    "loss_seg",
    "loss_adv",
    "val_loss",
    "val_dsc",
    "val_precision",
    "val_recall",
    "val_dsc_mean",
    "seconds",
)


class TrainCallback(Protocol):
    """Progress hooks for :func:`train`: subclass and override what you need (defaults: no-ops),
    or pass any object with these three methods."""

    def on_start(self, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        """Called once before the first epoch that runs (``start_epoch`` is 1-based)."""
        return None

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        """Called after every batch (``step`` is 1-based within the epoch)."""
        return None

    def on_epoch_end(self, record: dict[str, float], history: list[dict[str, float]]) -> None:
        """Called after validation and checkpointing of every epoch."""
        return None


class _Silent(TrainCallback):
    pass


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` produced."""

    history: list[dict[str, float]]
    last_checkpoint: Path
    best_checkpoint: Path
    best_epoch: int
    model_version: str


@dataclass
class _State:
    generator: MSANetGenerator
    critic: SegANCritic | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer | None
    history: list[dict[str, float]] = field(default_factory=list)
    best_score: float = -float("inf")
    best_epoch: int = 0


LR_SCHEDULES = ("constant", "cosine")
PRECISIONS = ("auto", "fp32", "bf16")


def epoch_lr(opts: dict[str, Any], epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch`` (1-based) of ``epochs`` under ``opts``' schedule."""
    lr = float(opts["lr"])
    if opts.get("lr_schedule", "constant") == "constant":
        return lr
    low = float(opts.get("min_lr", 0.0))
    return low + (lr - low) * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))


def _autocast(
    device: torch.device, precision: str = "auto"
) -> contextlib.AbstractContextManager[Any]:
    """bfloat16 autocast (no GradScaler needed) on CUDA by default, on CPU when asked: a CPU
    with native bf16 (AVX512-BF16, AMX) trains about twice as fast (README "The model");
    fp32 everywhere else. The weights and optimizer states stay float32 either way."""
    if precision == "bf16" or (precision == "auto" and device.type == "cuda"):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _batches(n: int, batch_size: int, rng: np.random.Generator) -> Iterator[npt.NDArray[np.int64]]:
    order = rng.permutation(n)
    for start in range(0, n, batch_size):
        yield order[start : start + batch_size]


def _to_tensor(a: npt.NDArray[Any], device: torch.device) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)).unsqueeze(1).to(device)
    return t.contiguous(memory_format=torch.channels_last)  # faster on CPU too (bench/inference)


def train_step(
    state: _State,
    config: ModelConfig,
    image: torch.Tensor,
    gt: torch.Tensor,
    device: torch.device,
    *,
    weight: torch.Tensor | None = None,
    precision: str = "auto",
) -> dict[str, float]:
    """One critic step (if adversarial) then one generator step; returns the batch losses.

    ``weight``: pixel weights of the ``dice+blob`` loss (:func:`.losses.lesion_weights`).
    """
    g, d = state.generator, state.critic
    with _autocast(device, precision):
        outputs = g(image)
    if not isinstance(outputs, list):
        raise RuntimeError("generator must be in training mode")
    out: dict[str, float] = {}
    adv_g: torch.Tensor | None = None
    if d is not None and state.opt_d is not None:
        d.requires_grad_(True)
        with _autocast(device, precision):  # critic step on detached outputs (MODEL.md A9)
            adv_d = adversarial_loss(d, image, [o.detach() for o in outputs], gt, config)
        loss_d = critic_loss(adv_d)
        state.opt_d.zero_grad(set_to_none=True)
        torch.autograd.backward(loss_d)
        state.opt_d.step()
        d.clip_weights()  # SegAN clipping, MODEL.md A8
        out["loss_d"] = loss_d.item()
        d.requires_grad_(False)
        with _autocast(device, precision):
            with torch.no_grad():
                real = d(critic_input(image, gt, config.critic_input))
            adv_g = adversarial_loss(d, image, outputs, gt, config, real_features=real)
        out["loss_adv"] = adv_g.item()
    seg = segmentation_loss(outputs, gt, config, weight)
    loss_g = generator_loss(seg, adv_g, config)
    state.opt_g.zero_grad(set_to_none=True)
    torch.autograd.backward(loss_g)
    state.opt_g.step()
    out["loss_g"] = loss_g.item()
    out["loss_seg"] = seg.item()
    return out


@torch.no_grad()
def validate(
    generator: MSANetGenerator,
    data: CropSet,
    config: ModelConfig,
    device: torch.device,
    batch_size: int = 8,
    *,
    precision: str = "auto",
) -> dict[str, float]:
    """Final-output Dice loss and pixel metrics (threshold 0.5) of ``data``."""
    generator.eval()
    probs = []
    try:
        for start in range(0, len(data), batch_size):
            x = _to_tensor(data.images[start : start + batch_size], device)
            with _autocast(device, precision):
                probs.append(generator(x).float().squeeze(1).cpu())
    finally:
        generator.train()
    p = torch.cat(probs)
    gt = torch.from_numpy(data.masks.astype(np.float32))
    m = pixel_metrics((p >= 0.5).numpy(), data.masks)
    return {
        "val_loss": float(dice_loss(p, gt, config.dice_eps)),
        "val_dsc": m["dsc"],
        "val_precision": m["precision"],
        "val_recall": m["recall"],
        "val_dsc_mean": m["dsc_mean"],
    }


def _build(
    config: ModelConfig, lr: float, betas: tuple[float, float], device: torch.device, seed: int
) -> _State:
    torch.manual_seed(seed)
    g = build_generator(config).to(device)
    d = build_critic(config).to(device) if config.adversarial else None
    # channels_last: ~30 % faster G+D steps for `lite` on CPU (measured), the norm on CUDA
    g = g.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    if d is not None:
        d = d.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
    opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=betas)
    opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=betas) if d is not None else None
    return _State(g, d, opt_g, opt_d)


def _write_logs(out_dir: Path, history: list[dict[str, float]], meta: dict[str, Any]) -> None:
    (out_dir / "log.json").write_text(json.dumps({**meta, "epochs": history}, indent=1))
    with (out_dir / "log.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)


def _training_state(state: _State, epoch: int, options: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": epoch,
        "optimizer_g": state.opt_g.state_dict(),
        "optimizer_d": state.opt_d.state_dict() if state.opt_d is not None else None,
        "torch_rng": torch.get_rng_state(),
        "history": plain(state.history),
        "best_score": state.best_score,
        "best_epoch": state.best_epoch,
        "options": plain(options),
    }


def _resume(path: Path, device: torch.device) -> tuple[ModelConfig, dict[str, Any], _State, int]:
    ckpt = load_checkpoint(path)
    ts = ckpt.training_state
    if ts is None:
        raise ValueError(f"checkpoint {path} has no training_state (use last.pt to resume)")
    opts = ts["options"]
    state = _build(ckpt.config, opts["lr"], tuple(opts["betas"]), device, opts["seed"])
    load_state(state.generator, ckpt.generator, "generator")
    state.opt_g.load_state_dict(ts["optimizer_g"])
    if state.critic is not None and state.opt_d is not None:
        if ckpt.critic is None or ts["optimizer_d"] is None:
            raise ValueError(f"checkpoint {path}: field 'critic' is missing for adversarial config")
        load_state(state.critic, ckpt.critic, "critic")
        state.opt_d.load_state_dict(ts["optimizer_d"])
    state.history = list(ts["history"])
    state.best_score, state.best_epoch = float(ts["best_score"]), int(ts["best_epoch"])
    torch.set_rng_state(ts["torch_rng"])
    return ckpt.config, opts, state, int(ts["epoch"])


def _init_weights(state: _State, config: ModelConfig, path: Path) -> None:
    """Start from ``path``'s weights (same networks required; the losses may differ)."""
    ckpt = load_checkpoint(path)
    if not ckpt.config.same_network(config):
        raise ValueError(
            f"--init-from {path}: its network differs from this run's "
            "(use the same --preset and architecture options)"
        )
    load_state(state.generator, ckpt.generator, "generator")
    if state.critic is not None and ckpt.critic is not None:
        load_state(state.critic, ckpt.critic, "critic")


def train(
    config: ModelConfig | None,
    data_dir: Path | str,
    out_dir: Path | str,
    *,
    epochs: int = 600,
    batch_size: int = 32,
    lr: float = 1e-4,
    seed: int = 42,
    device: str = "auto",
    resume: Path | str | None = None,
    callback: TrainCallback | None = None,
    augment: bool = True,
    betas: tuple[float, float] = (0.5, 0.999),
    init_from: Path | str | None = None,
    lr_schedule: str = "constant",
    min_lr: float = 0.0,
    precision: str = "auto",
) -> TrainResult:
    """Train MSA-Net on ``data_dir/train`` (validating on ``data_dir/val`` if present).

    Parameters
    ----------
    config
        Model configuration; ignored (may be None) when resuming — the checkpoint's is used.
    data_dir, out_dir
        Data in the :mod:`msanet_core.dataset` format; ``out_dir`` receives ``last.pt``,
        ``best.pt`` (highest pooled validation DSC, else lowest training L_seg), ``log.json``
        and ``log.csv``.
    epochs
        Total number of epochs (paper: 600); when resuming, training continues up to it.
    batch_size, lr, seed, betas, augment
        Paper defaults 32, 1e-4, 42; Adam betas from SegAN (MODEL.md A9); flips/shifts/
        rotations (A13). When resuming, the checkpoint's values are used.
    device
        ``auto`` (CUDA if available), ``cpu`` or ``cuda``.
    resume
        ``last.pt`` of an earlier run to continue exactly.
    init_from
        A checkpoint of the same configuration whose generator (and critic) weights start this
        run, with fresh optimizers at ``lr``: a second, fine-tuning phase of a recipe (e.g. a
        lower learning rate after a first run). Its path is recorded in the options.
    lr_schedule, min_lr
        ``constant`` (the paper: ``lr`` throughout) or ``cosine``: epoch ``e`` of ``epochs``
        runs at ``min_lr + (lr − min_lr)(1 + cos(π (e − 1) / epochs)) / 2``, from ``lr`` down to
        near ``min_lr`` at the last epoch (the schedule depends on ``epochs``, so a resumed run
        keeps it only with the same ``epochs``).
    precision
        ``auto`` (bfloat16 autocast on CUDA, float32 on CPU), ``fp32`` or ``bf16`` (autocast on
        either device: about twice as fast on a CPU with native bf16). Kept when resuming.
    callback
        Progress hooks (:class:`TrainCallback`).
    """
    dev = resolve_device(device)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    cb = callback or _Silent()
    if resume is not None:
        config, opts, state, start = _resume(Path(resume), dev)
    else:
        if config is None:
            raise ValueError("config is required unless resuming")
        opts = {
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "betas": list(betas),
            "augment": augment,
            "lr_schedule": lr_schedule,
            "min_lr": min_lr,
            "precision": precision,
        }
        state, start = _build(config, lr, betas, dev, seed), 0
        if init_from is not None:
            _init_weights(state, config, Path(init_from))
            opts["init_from"] = str(init_from)
    if opts.get("lr_schedule", "constant") not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {opts['lr_schedule']!r}")
    if opts.get("precision", "auto") not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {opts['precision']!r}")
    if not 0.0 <= float(opts.get("min_lr", 0.0)) <= float(opts["lr"]):
        raise ValueError(f"min_lr must be in [0, lr], got {opts.get('min_lr')}")
    if epochs < 1 or int(opts["batch_size"]) < 1:
        raise ValueError(f"epochs ({epochs}) and batch_size ({opts['batch_size']}) must be >= 1")
    train_set = load_split(data_dir, "train", config.norm_percentile)
    val_set = load_split(data_dir, "val", config.norm_percentile, required=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "config": config.to_dict(),
        "options": plain(opts),
        "data": str(data_dir),
        "train_samples": len(train_set),
        "val_samples": len(val_set),
    }
    deterministic = dev.type == "cpu"
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        return _run(
            config,
            state,
            opts=opts,
            train_set=train_set,
            val_set=val_set,
            out_dir=out_dir,
            dev=dev,
            start=start,
            epochs=epochs,
            cb=cb,
            meta=meta,
        )
    finally:
        torch.use_deterministic_algorithms(previous)


def _run(
    config: ModelConfig,
    state: _State,
    *,
    opts: dict[str, Any],
    train_set: CropSet,
    val_set: CropSet,
    out_dir: Path,
    dev: torch.device,
    start: int,
    epochs: int,
    cb: TrainCallback,
    meta: dict[str, Any],
) -> TrainResult:
    bs, seed = int(opts["batch_size"]), int(opts["seed"])
    precision = str(opts.get("precision", "auto"))  # runs saved before it existed: auto
    steps = -(-len(train_set) // bs)
    cb.on_start(start + 1, epochs, steps)
    version = ""
    state.generator.train()
    for epoch in range(start + 1, epochs + 1):
        t0 = time.perf_counter()
        lr = epoch_lr(opts, epoch, epochs)
        for opt in (state.opt_g, state.opt_d):
            for group in opt.param_groups if opt is not None else ():
                group["lr"] = lr
        rng = np.random.default_rng([seed, epoch])
        sums: dict[str, float] = {}
        for step, idx in enumerate(_batches(len(train_set), bs, rng), start=1):
            images: npt.NDArray[np.float32] = train_set.images[idx]
            masks: npt.NDArray[Any] = train_set.masks[idx]
            if opts["augment"]:
                images, masks = augment_batch(images, masks, rng)
            x, y = _to_tensor(images, dev), _to_tensor(masks, dev)
            w = None
            if config.seg_loss == "dice+blob":
                w = _to_tensor(lesion_weights(masks), dev)
            losses = train_step(state, config, x, y, dev, weight=w, precision=precision)
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
            cb.on_step(epoch, step, losses)
        record: dict[str, float] = {"epoch": epoch, "lr": lr}
        record.update({k: v / len(train_set) for k, v in sums.items()})
        if len(val_set):
            record.update(validate(state.generator, val_set, config, dev, precision=precision))
        record["seconds"] = time.perf_counter() - t0
        state.history.append(record)
        score = record["val_dsc"] if len(val_set) else -record["loss_seg"]
        is_best = score > state.best_score
        if is_best:
            state.best_score, state.best_epoch = score, epoch
        metadata = {
            "epochs": epoch,
            "seed": seed,
            "data": meta["data"],
            "metrics": {k: v for k, v in record.items() if k != "epoch"},
            "options": meta["options"],
            "torch": torch.__version__,
        }
        version = save_checkpoint(
            out_dir / "last.pt",
            config=config,
            generator=state.generator,
            critic=state.critic,
            metadata=metadata,
            training_state=_training_state(state, epoch, opts),
        )
        if is_best:
            save_checkpoint(
                out_dir / "best.pt",
                config=config,
                generator=state.generator,
                critic=state.critic,
                metadata=metadata,
                version=version,
            )
        _write_logs(out_dir, state.history, meta)
        logger.info("epoch %d/%d %s", epoch, epochs, json.dumps(record))
        cb.on_epoch_end(record, state.history)
    return TrainResult(
        state.history, out_dir / "last.pt", out_dir / "best.pt", state.best_epoch, version
    )
