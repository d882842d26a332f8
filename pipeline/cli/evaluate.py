"""``bonescan evaluate``: score a checkpoint on labelled crops and show where it fails.

The numbers are :mod:`msanet_core.metrics` (pooled and per-image DSC / precision / recall, lesion
sensitivity at IoU ≥ 0.1, FP lesions per image, size bins, HD95 in mm) over the crops of one split
written by ``bonescan data synth`` or ``bonescan data import-labelme``. Besides the table it
writes ``metrics.json``, ``per_image.csv`` and overlays of the lowest-DSC crops, because a
pooled DSC alone does not say whether a model misses small lesions or paints the kidneys.

torch and matplotlib are imported inside the command: other ``bonescan`` commands should not pay
for them at start-up.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
import numpy.typing as npt
import typer

from pipeline.cli.common import fail, first_line

if TYPE_CHECKING:
    from msanet_core.dataset import Sample
    from msanet_core.inference import Segmenter
    from msanet_core.metrics import LesionCounts

SPLITS = ("train", "val", "test")  # msanet_core.dataset.SPLITS, without importing torch for it
CSV_FIELDS = (
    "name",
    "patient",
    "view",
    "dsc",
    "precision",
    "recall",
    "gt_lesions",
    "detected",
    "false_positives",
    "hd95_mm",
)
GT_COLOUR = "#00e05a"  # green: ground truth
PRED_COLOUR = "#ff3b30"  # red: prediction
SIZE_LABELS = {
    "small": "< 20 px",
    "medium": "20-100 px",
    "large": "> 100 px",
}  # metrics.SIZE_BINS_PX


@dataclass(frozen=True)
class Crops:
    """Where the crops come from: ``folder`` (the split's, or DIR itself) and its files."""

    folder: Path
    split: str | None  # None when DIR held the crops directly
    paths: list[Path]

    @property
    def label(self) -> str:
        return self.split or self.folder.name


@dataclass(frozen=True)
class Predictions:
    """Binary masks ``(N, 256, 256)`` of the ground truth and the model, with per-crop facts."""

    names: list[str]
    patients: list[str]
    views: list[str]
    spacing_mm: list[float]
    gt: npt.NDArray[np.bool_]
    pred: npt.NDArray[np.bool_]


def find_crops(data: Path, split: str) -> Crops:
    """``DIR/<split>/*.npz`` if there are any, else ``DIR/*.npz``; one line and exit 1 if none."""
    if split not in SPLITS:
        fail(f"--split must be one of {', '.join(SPLITS)}, got {split!r}")
    if not data.is_dir():
        fail(f"data directory not found: {data}")
    folder = data / split
    paths = sorted(folder.glob("*.npz")) if folder.is_dir() else []
    if paths:
        return Crops(folder, split, paths)
    paths = sorted(data.glob("*.npz"))
    if not paths:
        fail(f"no .npz crops in {folder} or {data}")
    return Crops(data, None, paths)


def _load(path: Path) -> Sample:
    from msanet_core.dataset import load_sample  # noqa: PLC0415

    try:
        return load_sample(path)
    except (OSError, KeyError, ValueError) as error:
        fail(f"cannot read crop {path}: {error}")


def predict(segmenter: Segmenter, paths: list[Path]) -> Predictions:
    """Run the model over every crop, a chunk at a time (only masks are kept, not images)."""
    from rich.console import Console  # noqa: PLC0415
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn  # noqa: PLC0415

    chunk = max(segmenter.batch_size, 8)
    names, patients, views, spacing, gts, preds = [], [], [], [], [], []
    bar = Progress(
        TextColumn("predicting"), BarColumn(), MofNCompleteColumn(),
        console=Console(stderr=True), transient=True,
    )  # fmt: skip
    with bar:
        task = bar.add_task("predict", total=len(paths))
        for start in range(0, len(paths), chunk):
            samples = [_load(p) for p in paths[start : start + chunk]]
            masks = segmenter.masks(segmenter.predict(np.stack([s.image for s in samples])))
            for sample, mask in zip(samples, masks, strict=True):
                names.append(sample.name)
                patients.append(sample.patient_id)
                views.append(sample.view)
                spacing.append(sample.pixel_spacing_mm)
                gts.append(sample.mask > 0)
                preds.append(mask > 0)
            bar.advance(task, len(samples))
    return Predictions(names, patients, views, spacing, np.stack(gts), np.stack(preds))


def _total(counts: list[LesionCounts]) -> LesionCounts:
    """Per-image lesion counts summed: the set's counts, without labelling every image twice."""
    from msanet_core.metrics import LesionCounts  # noqa: PLC0415

    by_size = {
        size: (sum(c.by_size[size][0] for c in counts), sum(c.by_size[size][1] for c in counts))
        for size in counts[0].by_size
    }
    return LesionCounts(
        gt_lesions=sum(c.gt_lesions for c in counts),
        detected=sum(c.detected for c in counts),
        pred_components=sum(c.pred_components for c in counts),
        false_positives=sum(c.false_positives for c in counts),
        images=sum(c.images for c in counts),
        by_size=by_size,
    )


def score(result: Predictions) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Set-level metrics (the keys of :func:`msanet_core.metrics.evaluate`) and one row per crop.

    HD95 uses each crop's own pixel spacing; with one spacing for all crops (the usual case)
    the summary equals ``metrics.evaluate(pred, gt, spacing_mm=(s, s))``.
    """
    from msanet_core import metrics  # noqa: PLC0415

    summary: dict[str, Any] = metrics.pixel_metrics(result.pred, result.gt)
    per = metrics.scores(metrics.confusion(result.pred, result.gt))
    lesions = [metrics.lesion_metrics(p, g) for p, g in zip(result.pred, result.gt, strict=True)]
    summary.update({f"lesion_{k}": v for k, v in _total(lesions).to_dict().items()})
    rows: list[dict[str, Any]] = []
    for i, (name, counts) in enumerate(zip(result.names, lesions, strict=True)):
        p, g, s = result.pred[i], result.gt[i], result.spacing_mm[i]
        rows.append(
            {
                "name": name,
                "patient": result.patients[i],
                "view": result.views[i],
                "dsc": float(per["dsc"][i]),
                "precision": float(per["precision"][i]),
                "recall": float(per["recall"][i]),
                "gt_lesions": counts.gt_lesions,
                "detected": counts.detected,
                "false_positives": counts.false_positives,
                "hd95_mm": metrics.hd95(p, g, (s, s)),
            }
        )
    finite = [r["hd95_mm"] for r in rows if math.isfinite(r["hd95_mm"])]
    summary["hd95_mm"] = float(np.mean(finite)) if finite else float("nan")
    summary["hd95_images"] = len(finite)
    return summary, rows


def json_safe(value: Any) -> Any:
    """NaN/inf → None and tuples → lists, so the output is strict JSON (``json.loads`` anywhere)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """One row per crop; ``hd95_mm`` is empty where either mask is empty."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            cells = {
                k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()
            }
            writer.writerow(cells)


def worst(rows: list[dict[str, Any]], n: int) -> list[int]:
    """Indices of the ``n`` lowest-DSC crops, ties broken by name (stable across runs)."""
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["dsc"], rows[i]["name"]))
    return order[:n]


def plot_overlay(
    image: npt.NDArray[Any],
    gt: npt.NDArray[np.bool_],
    pred: npt.NDArray[np.bool_],
    *,
    row: dict[str, Any],
    rank: int,
    path: Path,
) -> None:
    """The crop in grey with the ground-truth and predicted outlines, legend and DSC in the title.

    Uses the object-oriented ``Figure`` (Agg canvas), not pyplot: no global backend switch.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415

    from msanet_core.inference import normalise_counts  # noqa: PLC0415

    fig = Figure(figsize=(5.2, 5.6), dpi=100)
    ax = fig.add_subplot()
    ax.imshow(normalise_counts(image), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    for mask, colour in ((gt, GT_COLOUR), (pred, PRED_COLOUR)):
        if mask.any() and not mask.all():  # contour() of a constant field warns and draws nothing
            ax.contour(mask.astype(np.float32), levels=[0.5], colors=colour, linewidths=1.2)
    ax.set_axis_off()
    handles = [
        Line2D([], [], color=GT_COLOUR, label=f"ground truth ({row['gt_lesions']} lesions)"),
        Line2D([], [], color=PRED_COLOUR, label=f"prediction ({int(pred.sum())} px)"),
    ]
    ax.legend(handles=handles, loc="lower center", fontsize=8, framealpha=0.8)
    ax.set_title(
        f"#{rank} {row['name']}: DSC {row['dsc']:.3f}\n"
        f"precision {row['precision']:.3f}, recall {row['recall']:.3f}, "
        f"detected {row['detected']}/{row['gt_lesions']}, FP {row['false_positives']}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path)


def write_worst(
    result: Predictions, rows: list[dict[str, Any]], crops: Crops, n: int, folder: Path
) -> list[Path]:
    """``folder/<rank>_<name>.png`` for the ``n`` lowest-DSC crops (old overlays removed first)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    written = []
    for rank, i in enumerate(worst(rows, n), start=1):
        name = result.names[i]
        sample = _load(crops.paths[i])  # rows are in file order; images were not kept
        path = folder / f"{rank:02d}_{name}.png"
        plot_overlay(sample.image, result.gt[i], result.pred[i], row=rows[i], rank=rank, path=path)
        written.append(path)
    return written


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def print_table(report: dict[str, Any]) -> None:
    """The headline numbers as a rich table on stdout."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    from msanet_core.metrics import SIZE_BINS_PX  # noqa: PLC0415

    low, high = SIZE_BINS_PX
    size_labels = {"small": f"< {low} px", "medium": f"{low}-{high} px", "large": f"> {high} px"}
    m = report["metrics"]
    table = Table(title=f"{report['model_version']} on {report['crops']}", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    rows = [
        ("images (patients)", f"{report['images']} ({report['patients']})"),
        ("pooled DSC", _fmt(m["dsc"])),
        ("pooled precision", _fmt(m["precision"])),
        ("pooled recall", _fmt(m["recall"])),
        ("mean per-image DSC (SD)", f"{_fmt(m['dsc_mean'])} ({_fmt(m['dsc_sd'])})"),
        (
            f"lesion sensitivity (IoU ≥ {report['min_iou']})",
            f"{_fmt(m['lesion_sensitivity'])} ({m['lesion_detected']}/{m['lesion_gt_lesions']})",
        ),
        ("FP lesions per image", _fmt(m["lesion_fp_per_image"], 2)),
        (f"HD95 mm (mean of {m['hd95_images']})", _fmt(m["hd95_mm"], 1)),
    ]
    for size, (total, hit) in m["lesion_by_size"].items():
        value = f"{_fmt(m[f'lesion_sensitivity_{size}'])} ({hit}/{total})"
        rows.append((f"sensitivity, {size} lesions ({size_labels[size]})", value))
    rows += [
        ("threshold", f"{report['threshold']:g}"),
        ("model version", report["model_version"]),
        ("parameters", f"{report['parameters']:,}"),
    ]
    for name, value in rows:
        table.add_row(name, value)
    Console(soft_wrap=False).print(table)


def _load_model(weights: Path, device: str, batch_size: int | None) -> Segmenter:
    from msanet_core.checkpoint import CheckpointError  # noqa: PLC0415
    from msanet_core.inference import Segmenter  # noqa: PLC0415

    if not weights.is_file():
        fail(f"weights not found: {weights}")
    try:
        return Segmenter.load(weights, device=device, batch_size=batch_size)
    except CheckpointError as error:
        fail(first_line(error))  # names the file and the bad field; torch adds lines below
    except ValueError as error:
        fail(str(error))


def evaluate_command(
    *,
    weights: Annotated[Path, typer.Option("--weights", help="Checkpoint (best.pt) to score.")],
    data: Annotated[
        Path, typer.Option("--data", help="Data root with <split>/*.npz, or a folder of .npz.")
    ],
    split: Annotated[str, typer.Option(help="train, val or test.")] = "test",
    out: Annotated[
        Path | None, typer.Option(help="Output folder (default: <weights dir>/eval-<split>).")
    ] = None,
    worst_n: Annotated[int, typer.Option("--worst", help="Overlays of the N lowest-DSC.")] = 8,
    threshold: Annotated[float, typer.Option(help="Probability ≥ this is lesion.")] = 0.5,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    batch_size: Annotated[
        int | None, typer.Option(help="Crops per forward pass (default: 1 CPU, 8 CUDA).")
    ] = None,
    threads: Annotated[int | None, typer.Option(min=1, help="torch CPU threads.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Score a checkpoint on labelled crops: metrics table, metrics.json, per_image.csv, worst/."""
    if not 0.0 < threshold <= 1.0:
        fail(f"--threshold must be in (0, 1], got {threshold}")
    if worst_n < 0:
        fail(f"--worst must be ≥ 0, got {worst_n}")
    crops = find_crops(data, split)
    out = out or weights.parent / f"eval-{crops.label}"
    import torch  # noqa: PLC0415

    from msanet_core.generator import count_parameters  # noqa: PLC0415

    if threads:
        torch.set_num_threads(threads)  # README: on a busy host, fewer threads beat spinning ones
    segmenter = _load_model(weights, device, batch_size)
    segmenter.threshold = threshold
    result = predict(segmenter, crops.paths)
    summary, rows = score(result)
    report = {
        "model_version": segmenter.model_version,
        "preset": segmenter.config.name,
        "parameters": count_parameters(segmenter.model),
        "weights": str(weights),
        "crops": str(crops.folder),
        "split": crops.split,
        "threshold": threshold,
        "min_iou": 0.1,  # msanet_core.metrics.lesion_metrics default (MODEL.md §6.3)
        "device": str(segmenter.device),
        "images": len(rows),
        "patients": len(set(result.patients)),
        "metrics": summary,
    }
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(json_safe(report), indent=1) + "\n")
        write_csv(rows, out / "per_image.csv")
        write_worst(result, rows, crops, worst_n, out / "worst")
    except OSError as error:
        fail(f"cannot write to {out}: {error.strerror or error}")
    if as_json:
        typer.echo(json.dumps(json_safe(report), indent=1))
    else:
        print_table(report)
        overlays = min(worst_n, len(rows))
        typer.echo(f"wrote {out}: metrics.json, per_image.csv, {overlays} overlays in worst/")
