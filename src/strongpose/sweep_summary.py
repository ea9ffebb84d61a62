"""One table of a sweep's runs: ``python -m strongpose.sweep_summary dir=multirun/<date>/<time> [metric=val/AP]
[csv=FILE]``.

Reads what every training run leaves in its folder (``.hydra/overrides.yaml``, ``metrics.json``, ``failed.txt``)
under ``dir``, at any depth (a multirun's job folders, or several single runs' folders), and prints one line a
run, best first: the overrides that differ between the runs (those all share are printed once above), the value
``main()`` returned to the sweeper (the best checkpoint's score when it monitors ``optimized_metric``, else the
final value), the step reached, and the status: ``done``, ``failed`` (with ``failed.txt``'s reason) or
``unfinished`` (running, killed, or requeued and not yet resumed). W&B compares runs online; this is the same
comparison from the files alone (offline runs, a cluster's scratch disk). ``csv=FILE`` writes every run's
overrides and final metrics for a notebook.
"""

from __future__ import annotations

import csv
import json
import re
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import yaml
from omegaconf import DictConfig

from strongpose.callbacks import monitor_mode
from strongpose.config_check import (CONFIG_DIR, ConfigError, InputError, check_types, report_input_errors,
                                     run_with_key_hints)
from strongpose.train import FAILED_FILE, METRICS_FILE

TYPES: dict[str, Any] = {"dir": Path, "metric": str | None, "csv": Path | None}


@dataclass
class Run:
    """One training run's folder as the summary reads it."""

    folder: Path
    overrides: dict[str, str]
    status: str  # done | failed | unfinished
    metrics: dict[str, float | None] = field(default_factory=dict)
    best: dict | None = None  # metrics.json's best_checkpoint: path, monitor, score
    optimized_metric: str | None = None
    global_step: int | None = None
    reason: str = ""  # failed.txt's first line

    def result(self, metric: str | None) -> float | None:
        """What the sweeper got for ``metric`` (default: the run's ``optimized_metric``): the best checkpoint's
        score when the checkpoints were chosen by it, else its final value; None when the run has none."""
        name = metric or self.optimized_metric
        if self.best and self.best.get("monitor") == name and self.best.get("score") is not None:
            return float(self.best["score"])
        value = self.metrics.get(name) if name else None
        return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def failure_reason(text: str) -> str:
    """The error line of ``failed.txt`` (a traceback as Python prints it: the last line that is not indented nor
    a traceback's header), its exception's module path left out: ``ConfigError: ...``."""
    lines = [line for line in text.strip().splitlines() if line.strip() and not line[:1].isspace()
             and not line.startswith(("Traceback (most recent call last)", "During handling of the above",
                                      "The above exception was the direct cause"))]
    return re.sub(r"^(?:\w+\.)+(\w+:)", r"\1", lines[-1]) if lines else ""


def read_run(folder: Path) -> Run:
    """The run in ``folder`` (which holds ``.hydra/overrides.yaml``); a damaged file is named, not skipped."""
    overrides_file = folder / ".hydra" / "overrides.yaml"
    try:
        listed = yaml.safe_load(overrides_file.read_text()) or []
    except (OSError, yaml.YAMLError) as err:
        raise InputError(f"{overrides_file}: cannot be read as Hydra's overrides list: {err}") from None
    if not isinstance(listed, list):
        raise InputError(f"{overrides_file}: not a list of overrides (Hydra writes one `- key=value` a line)")
    overrides = dict(str(item).split("=", 1) if "=" in str(item) else (str(item), "") for item in listed)
    metrics_file, failed_file = folder / METRICS_FILE, folder / FAILED_FILE
    if metrics_file.is_file():
        try:
            saved = json.loads(metrics_file.read_text())
            metrics = {str(k): v for k, v in saved["metrics"].items()}
        except (OSError, ValueError, KeyError, AttributeError, TypeError) as err:
            raise InputError(f"{metrics_file}: not a StrongPose run's metrics file ({type(err).__name__}: "
                             f"{err})") from None
        return Run(folder, overrides, "done", metrics, saved.get("best_checkpoint"), saved.get("optimized_metric"),
                   saved.get("global_step"))
    if failed_file.is_file():
        return Run(folder, overrides, "failed", reason=failure_reason(failed_file.read_text(errors="replace")))
    return Run(folder, overrides, "unfinished")


def find_runs(root: Path) -> list[Run]:
    """Every run folder under ``root`` (``root`` itself included), in path order."""
    if not root.is_dir():
        raise InputError(f"dir={root}: no such folder (a multirun's folder: multirun/<date>/<time>)")
    folders = sorted({p.parent.parent for p in root.rglob("overrides.yaml") if p.parent.name == ".hydra"},
                     key=lambda p: [(0, int(part), "") if part.isdigit() else (1, 0, part)
                                    for part in p.relative_to(root).parts])  # job 2 before job 10
    # an evaluate / predict run has no metrics.json nor failed.txt either; a training run's config has a trainer
    return [read_run(f) for f in folders if (f / METRICS_FILE).is_file() or (f / FAILED_FILE).is_file()
            or "trainer" in _config_keys(f)]


def _config_keys(folder: Path) -> set[str]:
    try:
        config = yaml.safe_load((folder / ".hydra" / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return set()
    return set(config) if isinstance(config, dict) else set()


def ranked(runs: list[Run], metric: str | None) -> list[Run]:
    """Runs with a result first, best first (higher for a COCO statistic, lower for a loss), then the others; in
    folder order when they optimised different metrics (``metric`` null), whose values do not compare."""
    if metric is None and len({run.optimized_metric for run in runs if run.status == "done"}) > 1:
        return list(runs)

    def key(run: Run) -> tuple:
        value = run.result(metric)
        sign = -1.0 if monitor_mode(metric or run.optimized_metric) == "max" else 1.0
        return (value is None, sign * value if value is not None else 0.0)

    return sorted(runs, key=key)


def table(runs: list[Run], root: Path, metric: str | None) -> str:
    """The printed summary: overrides all runs share, then one aligned line a run."""
    if not runs:
        return f"no training runs under {root} (folders with .hydra/overrides.yaml and a metrics.json or failed.txt)"
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    varying = [k for k in keys if len({run.overrides.get(k) for run in runs}) > 1]
    shared = [f"{k}={runs[0].overrides[k]}" for k in keys if k not in varying]
    names = {run.optimized_metric for run in runs if run.optimized_metric}
    shown = metric or (names.pop() if len(names) == 1 else "optimized_metric")
    header = ["run", *varying, shown, "step", "status"]
    rows = []
    for run in ranked(runs, metric):
        value = run.result(metric)
        status = run.status + (f": {run.reason}" if run.reason else "")
        rows.append([str(run.folder.relative_to(root)) or ".", *(run.overrides.get(k, "-") for k in varying),
                     f"{value:.4f}" if value is not None else "-",
                     str(run.global_step) if run.global_step is not None else "-", status])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = [f"{len(runs)} runs under {root}" + (f"; shared overrides: {' '.join(shared)}" if shared else "")]
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    done = sum(run.status == "done" for run in runs)
    lines.append(f"done {done}, failed {sum(run.status == 'failed' for run in runs)}, "
                 f"unfinished {sum(run.status == 'unfinished' for run in runs)}")
    return "\n".join(lines)


def write_csv(runs: list[Run], root: Path, metric: str | None, path: Path) -> Path:
    """Every run's folder, status, overrides and final metrics (one column each), ranked as the table."""
    keys = list(dict.fromkeys(k for run in runs for k in run.overrides))
    metric_names = list(dict.fromkeys(name for run in runs for name in run.metrics))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "status", "result", "global_step", *keys, *metric_names])
        for run in ranked(runs, metric):
            value = run.result(metric)
            writer.writerow([str(run.folder.relative_to(root)) or ".", run.status, "" if value is None else value,
                             "" if run.global_step is None else run.global_step,
                             *(run.overrides.get(k, "") for k in keys),
                             *("" if run.metrics.get(m) is None else run.metrics[m] for m in metric_names)])
    return path


def summarise(cfg: DictConfig) -> list[Run]:
    """Print the table (and write the CSV) that ``cfg`` asks for; returns the runs, ranked."""
    check_types(cfg, TYPES)
    root = Path(cfg.dir)
    runs = find_runs(root)
    if cfg.metric and runs and not any(run.result(cfg.metric) is not None for run in runs if run.status == "done"):
        known = sorted({name for run in runs for name in run.metrics})
        raise ConfigError(f"metric={cfg.metric}: no run under {root} logged it; they logged: {', '.join(known)}")
    print(table(runs, root, cfg.metric))
    if cfg.csv:
        print(f"wrote {write_csv(runs, root, cfg.metric, Path(cfg.csv))}")
    return ranked(runs, cfg.metric)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="sweep_summary")
def main(cfg: DictConfig) -> None:
    with report_input_errors():
        summarise(cfg)


def cli() -> None:
    """``python -m strongpose.sweep_summary``: Hydra's ``main``, with the valid keys listed for an unknown one."""
    run_with_key_hints(main, "sweep_summary")


if __name__ == "__main__":
    cli()
