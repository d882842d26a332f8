"""``bonescan train``: train MSA-Net on crops written by ``bonescan data synth`` (or imported).

A thin wrapper over :func:`msanet_core.training.train`: it builds the ``ModelConfig`` from a
preset plus the ablation overrides, draws a rich progress bar, and redraws ``curves.png`` (losses
and validation DSC, matplotlib Agg) after every epoch. ``msanet_core`` is imported inside the
command: it pulls in torch, which other ``bonescan`` commands should not pay for.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.cli.common import fail

if TYPE_CHECKING:
    from msanet_core.config import ModelConfig

CURVES = (
    ("loss_g", "L(G)"),
    ("loss_d", "L(D)"),
    ("loss_seg", "L_seg"),
    ("val_loss", "val Dice loss"),
)


def _ints(text: str | None, option: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"{option} must be comma-separated integers, got {text!r}")


def _floats(text: str | None, option: str) -> tuple[float, ...] | None:
    if text is None:
        return None
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        fail(f"{option} must be comma-separated numbers, got {text!r}")


def plot_curves(history: list[dict[str, float]], path: Path) -> None:
    """Write the learning curves (losses left, validation DSC right) as a PNG."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    epochs = [r["epoch"] for r in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in CURVES:
        if any(key in r for r in history):
            left.plot(epochs, [r.get(key, float("nan")) for r in history], label=label)
    left.set_xlabel("epoch")
    left.set_title("losses")
    left.legend()
    for key, label in (("val_dsc", "pooled DSC"), ("val_dsc_mean", "mean per-image DSC")):
        if any(key in r for r in history):
            right.plot(epochs, [r.get(key, float("nan")) for r in history], label=label)
    right.set_xlabel("epoch")
    right.set_title("validation (threshold 0.5)")
    right.set_ylim(0, 1)
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _config(preset: str, ablation: str | None, overrides: dict[str, Any]) -> ModelConfig:
    from msanet_core.config import ModelConfig  # noqa: PLC0415

    try:
        config = ModelConfig.preset(preset, ablation=ablation)
        return config.replace(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as error:
        fail(str(error))


def train_command(
    *,
    data: Annotated[Path, typer.Option("--data", help="Directory with train/ (and val/) crops.")],
    out: Annotated[Path, typer.Option("--out", help="Output: checkpoints, logs, curves.")],
    preset: Annotated[str, typer.Option(help="Model size: paper, lite or tiny.")] = "lite",
    epochs: Annotated[int, typer.Option(min=1, help="Total epochs (paper: 600).")] = 600,
    batch_size: Annotated[int, typer.Option(min=1, help="Batch size (paper: 32).")] = 32,
    lr: Annotated[float, typer.Option(min=0.0, help="Adam learning rate (paper: 1e-4).")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Random seed (paper: 42).")] = 42,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    resume: Annotated[
        Path | None,
        typer.Option(help="last.pt to continue exactly (its config and options are used)."),
    ] = None,
    init_from: Annotated[
        Path | None,
        typer.Option(
            help="Checkpoint (same preset) whose weights start this run, fresh optimizers at "
            "--lr: a fine-tuning phase."
        ),
    ] = None,
    ablation: Annotated[
        str | None, typer.Option(help="A row of paper Tables 6-11, e.g. t6-rms, t11-concat.")
    ] = None,
    cdc: Annotated[bool | None, typer.Option("--cdc/--no-cdc", help="CDC layer 1.")] = None,
    msfe: Annotated[bool | None, typer.Option("--msfe/--no-msfe", help="MSFE layers.")] = None,
    pyramid: Annotated[
        bool | None, typer.Option("--pyramid/--no-pyramid", help="Input image pyramid.")
    ] = None,
    deep_supervision: Annotated[
        bool | None,
        typer.Option("--deep-supervision/--no-deep-supervision", help="Four supervised outputs."),
    ] = None,
    adversarial: Annotated[
        bool | None, typer.Option("--adversarial/--no-adversarial", help="SegAN critic.")
    ] = None,
    seg_loss: Annotated[str | None, typer.Option(help="dice, bce, dice+bce or dice+blob.")] = None,
    alpha: Annotated[float | None, typer.Option(help="Weight of L_seg.")] = None,
    beta: Annotated[float | None, typer.Option(help="Weight of L_adv.")] = None,
    output_weights: Annotated[
        str | None, typer.Option(help="D1..D4 weights, e.g. 1,1,1,1.")
    ] = None,
    critic_input: Annotated[
        str | None, typer.Option(help="image_x_mask, concat, sum or mask.")
    ] = None,
    crac_dilations: Annotated[str | None, typer.Option(help="Six CRAC dilations.")] = None,
    weight_clip: Annotated[float | None, typer.Option(help="Critic clip (0 = off).")] = None,
    augment: Annotated[
        bool, typer.Option("--augment/--no-augment", help="Flip/shift/rotate.")
    ] = True,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
    lr_schedule: Annotated[
        str, typer.Option(help="constant (paper) or cosine (lr down to --min-lr by the end).")
    ] = "constant",
    min_lr: Annotated[float, typer.Option(min=0.0, help="Last learning rate of cosine.")] = 0.0,
    precision: Annotated[
        str, typer.Option(help="auto (bf16 on CUDA, fp32 on CPU), fp32 or bf16.")
    ] = "auto",
) -> None:
    """Train MSA-Net (alternating critic/generator steps, Adam) and write best.pt and last.pt."""
    import torch  # noqa: PLC0415

    from msanet_core.checkpoint import CheckpointError  # noqa: PLC0415
    from msanet_core.training import train  # noqa: PLC0415
    from msanet_core.training_data import TrainingDataError  # noqa: PLC0415

    overrides = {
        "use_cdc": cdc, "use_msfe": msfe, "use_pyramid": pyramid,
        "deep_supervision": deep_supervision, "adversarial": adversarial, "seg_loss": seg_loss,
        "alpha": alpha, "beta": beta, "critic_input": critic_input, "weight_clip": weight_clip,
        "output_weights": _floats(output_weights, "--output-weights"),
        "crac_dilations": _ints(crac_dilations, "--crac-dilations"),
    }  # fmt: skip
    config = None if resume else _config(preset, ablation, overrides)
    if threads:
        torch.set_num_threads(threads)
    if not data.is_dir():
        fail(f"data directory not found: {data}")
    if init_from is not None and resume is not None:
        fail("--init-from starts a new run; --resume continues one: choose one")
    try:
        with _Progress(out) as progress:
            result = train(
                config, data, out, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
                device=device, resume=resume, callback=progress, augment=augment,
                init_from=init_from, lr_schedule=lr_schedule, min_lr=min_lr,
                precision=precision,
            )  # fmt: skip
    except (TrainingDataError, CheckpointError, ValueError, OSError) as error:
        fail(str(error))
    best = result.history[result.best_epoch - 1] if result.best_epoch else {}
    typer.echo(
        f"{result.model_version}: best epoch {result.best_epoch} "
        f"(val DSC {best.get('val_dsc', float('nan')):.4f}) → {result.best_checkpoint}"
    )


class _Progress:
    """A :class:`msanet_core.training.TrainCallback` drawing a rich progress bar and the curves."""

    def __init__(self, out: Path) -> None:
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.out = out
        self.bar = Progress(
            TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), TextColumn("{task.fields[losses]}"), transient=False,
        )  # fmt: skip
        self.task = self.bar.add_task("train", total=0, epoch=0, losses="")

    def __enter__(self) -> _Progress:
        return self  # the bar starts in on_start: nothing is drawn when loading the data fails

    def __exit__(self, *exc: object) -> None:
        self.bar.stop()

    def on_start(self, start_epoch: int, epochs: int, steps_per_epoch: int) -> None:
        total = (epochs - start_epoch + 1) * steps_per_epoch
        self.bar.update(self.task, total=total, epoch=f"{start_epoch}/{epochs}")
        self.epochs = epochs
        self.bar.start()

    def on_step(self, epoch: int, step: int, losses: dict[str, float]) -> None:
        text = " ".join(f"{k}={v:.3f}" for k, v in losses.items())
        self.bar.update(self.task, advance=1, epoch=f"{epoch}/{self.epochs}", losses=text)

    def on_epoch_end(self, record: dict[str, float], history: list[dict[str, float]]) -> None:
        if "val_dsc" in record:
            self.bar.console.print(
                f"epoch {int(record['epoch'])}: L_seg {record['loss_seg']:.4f}, "
                f"val DSC {record['val_dsc']:.4f} ({record['seconds']:.1f} s)"
            )
        plot_curves(history, self.out / "curves.png")
