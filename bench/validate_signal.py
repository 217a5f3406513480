"""Does grokwatch's signal track generalization? Correlations against held-out accuracy.

Usage (from the repository root):
    python bench/validate_signal.py RUN_DIR --db STORE [--run ID] [--plot out.png]

RUN_DIR holds `heldout.jsonl` (one line per checkpoint and group: step, group, accuracy,
train_loss, n_heldout, ...), which grokwatch itself never reads; STORE is the grokwatch store of
that run (`grokwatch RUN_DIR --once --db STORE`). Prints, per group and for `__all__`, Pearson and
Spearman correlations (with n) between held-out accuracy and each stored signal over three
windows, then grokwatch's onset alerts against the step where held-out accuracy starts to rise,
next to the paper's figures. With matplotlib installed (`pip install grokwatch[plot]`), `--plot`
writes the curves as a PNG. See docs/validation.md for the definitions and a reading.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from grokwatch.errors import GrokwatchError, UsageError
from grokwatch.export import export_rows
from grokwatch.reader import Reader

ALL_GROUP = "__all__"
# Columns correlated with held-out accuracy; `train_loss` is the trainer's training loss.
SIGNALS = ("pathway_distance", "consistency", "complexity", "raw_cosine", "loss", "train_loss")
SIGNAL_LABELS = {
    "pathway_distance": "distance",
    "consistency": "consistency",
    "complexity": "complexity",
    "raw_cosine": "raw_cosine",
    "loss": "probe_loss",
    "train_loss": "train_loss",
}
# Li, Fan, Zhou (arXiv 2506.21551), OLMoE at tau 0.7, checkpoints after the rise, n ~ 5/domain.
PAPER = {
    "pathway_distance": "-0.93..-0.98",
    "consistency": "+0.92..+0.99",
    "complexity": "(= -consistency)",
    "raw_cosine": "not reported",
    "loss": "weak/wrong sign",
    "train_loss": "weak/wrong sign",
}
RISE_MARGIN = 0.1  # held-out accuracy must stay this far above its first value
FLAT_FRACTION = 0.1  # training loss must stay below this share of its first value
SATURATION_SHARE = 0.95  # the rise window ends where accuracy reaches this share of its max
WINDOWS = ("whole", "flat", "rise")


@dataclass(frozen=True)
class HeldoutPoint:
    """Held-out accuracy and training loss of one group at one checkpoint."""

    accuracy: float
    train_loss: float
    n_heldout: int


@dataclass
class GroupSeries:
    """Aligned per-checkpoint values of one group: steps, held-out accuracy and the signals."""

    group: str
    steps: np.ndarray
    accuracy: np.ndarray
    signals: dict[str, np.ndarray]
    onset_steps: list[int] = field(default_factory=list)
    onset_evidence: list[dict[str, Any]] = field(default_factory=list)
    reversal_steps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Correlation:
    """Pearson and Spearman correlation of two series over their jointly finite points."""

    n: int
    pearson: float
    pearson_p: float
    spearman: float
    spearman_p: float


def load_heldout(run_dir: Path) -> dict[str, dict[int, HeldoutPoint]]:
    """Read RUN_DIR/heldout.jsonl into {group: {step: point}} (a later line for a step wins)."""
    path = run_dir / "heldout.jsonl"
    if not path.is_file():
        raise UsageError(
            f"{path}: no held-out accuracy file; give the run directory of a run "
            "that writes heldout.jsonl (e.g. examples/modular_grokking)"
        )
    heldout: dict[str, dict[int, HeldoutPoint]] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            point = HeldoutPoint(
                accuracy=float(record["accuracy"]),
                train_loss=float(record.get("train_loss", math.nan)),
                n_heldout=int(record.get("n_heldout", 1)),
            )
            heldout.setdefault(str(record["group"]), {})[int(record["step"])] = point
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(
                f"{path}:{number}: not a held-out record ({exc}); each line needs "
                '{"step", "group", "accuracy"}'
            ) from exc
    if not heldout:
        raise UsageError(f"{path}: empty; run the trainer until it has written a checkpoint")
    return heldout


def global_heldout(heldout: dict[str, dict[int, HeldoutPoint]]) -> dict[int, HeldoutPoint]:
    """Held-out accuracy over all groups at steps every group has, weighted by held-out size.

    Weighting by n_heldout makes it the accuracy over the whole held-out set.
    """
    common = set.intersection(*(set(points) for points in heldout.values()))
    result: dict[int, HeldoutPoint] = {}
    for step in sorted(common):
        points = [heldout[g][step] for g in heldout]
        total = sum(p.n_heldout for p in points)
        accuracy = sum(p.accuracy * p.n_heldout for p in points) / total
        train = sum(p.train_loss * p.n_heldout for p in points) / total
        result[step] = HeldoutPoint(accuracy, train, total)
    return result


def build_series(
    heldout: dict[str, dict[int, HeldoutPoint]],
    metrics: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
) -> dict[str, GroupSeries]:
    """Join held-out points and stored metric rows by (group, step); attach onset alerts."""
    by_group: dict[str, dict[int, dict[str, Any]]] = {}
    for row in metrics:
        by_group.setdefault(str(row["group"]), {})[int(row["step"])] = row
    targets = {**heldout, ALL_GROUP: global_heldout(heldout)}
    series: dict[str, GroupSeries] = {}
    for group in [*sorted(g for g in targets if g != ALL_GROUP), ALL_GROUP]:
        rows = by_group.get(group, {})
        steps = sorted(set(rows) & set(targets[group]))
        if not steps:
            continue
        values: dict[str, list[float]] = {name: [] for name in SIGNALS}
        for step in steps:
            row = rows[step]
            for name in SIGNALS[:-1]:
                values[name].append(_float(row.get(name)))
            # Only `__all__` rows carry the trainer's loss; a group uses its own training loss.
            values["train_loss"].append(
                _float(row.get("trainer_loss"))
                if group == ALL_GROUP
                else targets[group][step].train_loss
            )
        series[group] = GroupSeries(
            group=group,
            steps=np.array(steps, dtype=np.int64),
            accuracy=np.array([targets[group][s].accuracy for s in steps]),
            signals={k: np.array(v, dtype=np.float64) for k, v in values.items()},
        )
    for alert in alerts:
        target = series.get(str(alert.get("group") or ""))
        if target is None or alert.get("step") is None:
            continue
        if alert["kind"] == "onset":
            target.onset_steps.append(int(alert["step"]))
            evidence = alert.get("evidence") or {}
            target.onset_evidence.append(
                json.loads(evidence) if isinstance(evidence, str) else evidence
            )
        elif alert["kind"] == "reversal":
            target.reversal_steps.append(int(alert["step"]))
    return series


def _float(value: Any) -> float:
    return math.nan if value is None else float(value)


def rise_step(steps: np.ndarray, accuracy: np.ndarray, margin: float = RISE_MARGIN) -> int | None:
    """First checkpoint from which held-out accuracy stays >= its first value + margin."""
    if len(steps) == 0:
        return None
    above = accuracy >= accuracy[0] + margin
    # suffix_all[i]: every checkpoint from i on is above the threshold.
    suffix_all = np.logical_and.accumulate(above[::-1])[::-1]
    hits = np.flatnonzero(suffix_all)
    return int(steps[hits[0]]) if len(hits) else None


def flat_step(steps: np.ndarray, loss: np.ndarray, fraction: float = FLAT_FRACTION) -> int | None:
    """First checkpoint from which training loss stays below `fraction` of its first value.

    A single checkpoint above it between two below it is forgiven, so that a one-checkpoint
    spike (an Adam "slingshot", as in the example run) does not reset the flat stretch.
    """
    finite = np.isfinite(loss)
    if not finite.any():
        return None
    below = finite & (loss < fraction * loss[finite][0])
    spike = np.zeros_like(below)
    spike[1:-1] = below[:-2] & below[2:]
    stays = ~finite | below | spike
    suffix_all = np.logical_and.accumulate(stays[::-1])[::-1]
    hits = np.flatnonzero(suffix_all & below)
    return int(steps[hits[0]]) if len(hits) else None


def saturation_step(
    steps: np.ndarray, accuracy: np.ndarray, start: int, share: float = SATURATION_SHARE
) -> int:
    """First checkpoint at or after `start` where accuracy reaches `share` of its run maximum."""
    level = share * float(np.nanmax(accuracy))
    hits = np.flatnonzero((steps >= start) & (accuracy >= level))
    return int(steps[hits[0]]) if len(hits) else int(steps[-1])


def correlate(x: np.ndarray, y: np.ndarray) -> Correlation:
    """Pearson and Spearman of x and y over points finite in both; NaN when n < 3 or constant."""
    keep = np.isfinite(x) & np.isfinite(y)
    n = int(keep.sum())
    if n < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return Correlation(n, math.nan, math.nan, math.nan, math.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pearson = stats.pearsonr(x[keep], y[keep])
        spearman = stats.spearmanr(x[keep], y[keep])
    return Correlation(
        n, float(pearson[0]), float(pearson[1]), float(spearman[0]), float(spearman[1])
    )


def windows(series: GroupSeries) -> dict[str, tuple[int | None, int | None]]:
    """Step ranges [first, last] of the windows: whole run, after loss flattened, the rise."""
    flat = flat_step(series.steps, series.signals["train_loss"])
    rise = rise_step(series.steps, series.accuracy)
    saturated = saturation_step(series.steps, series.accuracy, rise) if rise is not None else None
    return {
        "whole": (int(series.steps[0]), int(series.steps[-1])),
        "flat": (flat, int(series.steps[-1]) if flat is not None else None),
        "rise": (rise, saturated),
    }


def correlation_table(series: dict[str, GroupSeries]) -> list[list[str]]:
    """Rows of the correlation table: group, window, steps, signal, n, r, p, rho, p, paper."""
    rows: list[list[str]] = []
    for group, s in series.items():
        for window, (first, last) in windows(s).items():
            if first is None or last is None:
                rows.append([group, window, "none", "-", "0", "", "", "", "", ""])
                continue
            mask = (s.steps >= first) & (s.steps <= last)
            for name in SIGNALS:
                c = correlate(s.accuracy[mask], s.signals[name][mask])
                rows.append(
                    [
                        group,
                        window,
                        f"{first}-{last}",
                        SIGNAL_LABELS[name],
                        str(c.n),
                        _num(c.pearson),
                        _p(c.pearson_p),
                        _num(c.spearman),
                        _p(c.spearman_p),
                        PAPER[name],
                    ]
                )
    return rows


def onset_table(series: dict[str, GroupSeries]) -> list[list[str]]:
    """Rows: group, flat step, rise step, onset alerts, lag, plateau step, fired, reversals."""
    rows: list[list[str]] = []
    for group, s in series.items():
        flat = flat_step(s.steps, s.signals["train_loss"])
        rise = rise_step(s.steps, s.accuracy)
        first = s.onset_steps[0] if s.onset_steps else None
        evidence = s.onset_evidence[0] if s.onset_evidence else {}
        lag = first - rise if first is not None and rise is not None else None
        rows.append(
            [
                group,
                _step(flat),
                _step(rise),
                ",".join(str(v) for v in s.onset_steps) or "none",
                "-" if lag is None else f"{lag:+d}",
                _step(evidence.get("plateau_step")),
                ",".join(evidence.get("fired", [])) or "-",
                ",".join(str(v) for v in s.reversal_steps) or "-",
            ]
        )
    return rows


def _legend(group: str) -> str:
    # matplotlib hides labels that start with "_".
    return "all groups (weighted)" if group == ALL_GROUP else group


def _num(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:+.3f}"


def _p(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.2g}"


def _step(value: Any) -> str:
    return "-" if value is None else str(int(value))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain fixed-width text table (numbers right-aligned)."""
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)
    ]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.rjust(w) if c[:1] in "+-0123456789n" and c != "-" else c.ljust(w)
            for c, w in zip(cells, widths, strict=True)
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *map(line, rows)])


def report(series: dict[str, GroupSeries], run_dir: Path, store: Path, run_id: int) -> str:
    """The full text report: definitions, correlation table, onset table, paper figures."""
    sizes = {g: len(s.steps) for g, s in series.items()}
    out = [
        f"validate_signal: {run_dir} against {store} (run {run_id}); checkpoints joined: "
        + ", ".join(f"{g} {n}" for g, n in sizes.items()),
        "held-out accuracy of __all__ = mean over groups weighted by n_heldout (the accuracy over"
        " the whole held-out set)",
        "train_loss: groups = heldout.jsonl train_loss (full training split of the group);"
        " __all__ = trainer_loss stored from trainer_state.json log_history",
        "windows: whole = every checkpoint",
        f"  flat = from the first checkpoint after which train loss stays < {FLAT_FRACTION:g} x"
        " its first value (a one-checkpoint spike is forgiven)",
        "  rise = from the rise step (first checkpoint after which held-out accuracy stays >= its"
        f" first value + {RISE_MARGIN:g}) to the first checkpoint at >= {SATURATION_SHARE:g} x"
        " its max",
        "complexity = 1 - consistency (group means alike), so its correlations are consistency's"
        " negated",
        "",
        "Correlation with held-out accuracy (r = Pearson, rho = Spearman, p two-sided)",
        format_table(
            ["group", "window", "steps", "signal", "n", "r", "p", "rho", "p", "paper"],
            correlation_table(series),
        ),
        "",
        "Onset alert vs the rise of held-out accuracy (lag = first onset - rise step)",
        format_table(
            ["group", "flat", "rise", "onsets", "lag", "plateau", "fired", "reversals"],
            onset_table(series),
        ),
        "",
        "Paper (Li, Fan, Zhou 2506.21551; OLMoE, tau 0.7, checkpoints after the rise, n ~ 5 per"
        " domain): distance -0.93..-0.98, consistency +0.92..+0.99; training and validation loss"
        " weak or wrong-signed.",
    ]
    return "\n".join(out)


def plot(series: dict[str, GroupSeries], out_path: Path, title: str) -> bool:
    """Write the curves as a PNG; returns False (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [
        ("held-out accuracy", None),
        ("train loss (log)", "train_loss"),
        ("pathway distance", "pathway_distance"),
        ("consistency (clipped)", "consistency"),
        ("raw cosine", "raw_cosine"),
    ]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 11), sharex=True)
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, s in enumerate(series.values()):
        colour = "0.5" if s.group == ALL_GROUP else colours[index % len(colours)]
        width = 1.0 if s.group == ALL_GROUP else 1.6
        rise = rise_step(s.steps, s.accuracy)
        for ax, (label, name) in zip(axes, panels, strict=True):
            y = s.accuracy if name is None else s.signals[name]
            ax.plot(s.steps, y, color=colour, lw=width, marker=".", ms=3, label=_legend(s.group))
            ax.set_ylabel(label)
            if rise is not None:
                ax.axvline(rise, color=colour, ls=":", lw=1.2)
            for onset in s.onset_steps:
                ax.axvline(onset, color=colour, ls="--", lw=1.2)
    axes[1].set_yscale("log")
    consistency = np.concatenate([s.signals["consistency"] for s in series.values()])
    finite = consistency[np.isfinite(consistency)]
    if len(finite):
        # Early max-normalised consistency swings far outside [0, 1]; clip to see the trend.
        low, high = np.percentile(finite, [5, 100])
        axes[3].set_ylim(low - 0.05, high + 0.05)
    axes[0].legend(
        loc="lower right", fontsize=8, title="dotted: rise, dashed: onset alert", title_fontsize=8
    )
    axes[-1].set_xlabel("step")
    axes[0].set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, dpi=80)
    plt.close(fig)
    return True


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="validate_signal.py",
        description="Correlate grokwatch's metrics with a run's held-out accuracy.",
    )
    parser.add_argument("run_dir", type=Path, help="run directory with heldout.jsonl")
    parser.add_argument("--db", type=Path, required=True, help="the grokwatch store of the run")
    parser.add_argument("--run", type=int, default=None, help="run id in the store (latest)")
    parser.add_argument("--plot", type=Path, default=None, help="write the curves to this PNG")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print the validation tables (and write the plot); 0 on success, 1/2 on errors."""
    args = parse_args(argv)
    try:
        heldout = load_heldout(args.run_dir)
        if not args.db.is_file():
            raise UsageError(
                f"{args.db}: no such store; make it with "
                f"`grokwatch {args.run_dir} --once --db {args.db}`"
            )
        reader = Reader(args.db)
        try:
            run_id = args.run if args.run is not None else reader.latest_run_id()
            if run_id is None:
                raise UsageError(f"{args.db}: the store has no run yet")
            metrics = list(export_rows(reader, "metrics", run_id))
            alerts = list(export_rows(reader, "alerts", run_id))
        finally:
            reader.close()
        series = build_series(heldout, metrics, alerts)
        if not series:
            raise UsageError(
                f"{args.db}: no checkpoint step in common with "
                f"{args.run_dir / 'heldout.jsonl'}; is it the store of this run?"
            )
    except GrokwatchError as exc:
        print(f"validate_signal: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    print(report(series, args.run_dir, args.db, run_id))
    if args.plot is not None:
        if plot(series, args.plot, f"{args.run_dir.resolve().name} (run {run_id})"):
            print(f"plot: {args.plot}")
        else:
            print("plot skipped: matplotlib is not installed (pip install 'grokwatch[plot]')")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
