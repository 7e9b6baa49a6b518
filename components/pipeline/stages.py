"""The DVC pipeline as steps a scheduler can run one by one, and what a run leaves to read.

`stage_order` reads the stages of `dvc.yaml` in dependency order; `run_stage` reproduces one
of them through DVC (so DVC still decides what is up to date) and hands every output line to
a callback; the `*_markdown` functions turn the run's outputs (the validation summary,
`metrics.json`, the model registry) into short texts for a person. `experiment_args` and
`restore_workspace` make an on-demand run a DVC experiment that leaves the workspace's
configuration as it found it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components import markdown
from components.config import BACKBONES, MIN_FOLDS

STATE_DIR = ".myelomet/study"
TAIL_LINES = 30
PROGRESS_SECONDS = "10"
TABLE2_METRICS = ("sensitivity", "specificity", "ppv", "npv", "accuracy", "f1", "kappa", "auc")
# A preset value that removes the key (`-S ~key`): the paper's configuration drops the
# demo's per-backbone tuning, so every backbone gets the same settings.
DROP = "~"
# `dvc exp run -S` overrides of each preset; "demo" is params.yaml as it stands.
PRESETS: dict[str, dict[str, Any]] = {
    "demo": {},
    "paper": {
        "training.overrides": DROP,
        "training.image_size": None,
        "training.batch_size": 16,
        "training.epochs": 100,
        "training.patience": 20,
        "training.finetune_epochs": 20,
        "training.max_parallel": None,
        "training.monitor": "val_loss",
        "input.crop": 1.0,
        "split.train": 0.72,
        "split.val": 0.20,
        "split.test": 0.08,
    },
}
WORKSPACE_FILES = ("params.yaml", "dvc.lock")


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; the message names it and ends with its last lines."""

    def __init__(self, stage: str, returncode: int, tail: Sequence[str], log_path: Path) -> None:
        self.stage = stage
        self.log_path = log_path
        self.tail = tuple(tail)
        super().__init__(
            f"stage '{stage}' failed (exit {returncode}); full log: {log_path}\n" + "\n".join(tail)
        )


def stage_order(root: Path) -> list[str]:
    """The pipeline stages of the project's `dvc.yaml`, each after every stage it needs.

    Stages that do not depend on each other keep their order in `dvc.yaml`; `.dvc` files
    (data added with `dvc add`) are not stages and are left out.

    Args:
        root: the project root (a DVC repository).
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(root)) as repo:
        stages = [s for s in repo.index.stages if isinstance(s, PipelineStage)]
        graph = repo.index.graph  # an edge goes from a stage to a stage it needs
        needs = {s: set(graph.successors(s)) & set(stages) for s in stages}
        ordered: list[PipelineStage] = []
        while len(ordered) < len(stages):
            ready = next(s for s in stages if s not in ordered and needs[s] <= set(ordered))
            ordered.append(ready)
        return [_address(s.dvcfile.path, s.name, Path(repo.root_dir)) for s in ordered]


def _address(dvcfile: str, name: str, root: Path) -> str:
    """How `dvc repro` run in root names a stage: `name`, or `sub/dvc.yaml:name`."""
    relative = Path(dvcfile).resolve().relative_to(root.resolve())
    return name if relative == Path("dvc.yaml") else f"{relative}:{name}"


def stage_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a stage: this one, this interpreter's scripts first on PATH (the
    stages call `myelomet`), progress bars at most every PROGRESS_SECONDS (each update is a
    log line), plus `extra`."""
    scripts = str(Path(sys.executable).parent)
    return {
        "TQDM_MININTERVAL": PROGRESS_SECONDS,
        **os.environ,
        "PATH": f"{scripts}{os.pathsep}{os.environ.get('PATH', '')}",
        **(extra or {}),
    }


def stream_command(
    cmd: Sequence[str],
    root: Path,
    log: Callable[[str], None],
    log_path: Path,
    env: Mapping[str, str] | None = None,
) -> tuple[int, list[str]]:
    """Run a command in root, passing each line of its stdout and stderr to `log` as it
    comes and writing them to log_path.

    Returns:
        The exit code and the last TAIL_LINES lines.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    with (
        log_path.open("w", encoding="utf-8") as out,
        subprocess.Popen(
            list(cmd),
            cwd=root,
            env=stage_env(env),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        ) as process,
    ):
        assert process.stdout is not None
        for raw in process.stdout:
            line = raw.rstrip()
            out.write(line + "\n")
            tail.append(line)
            log(line)
    return process.returncode, list(tail)


def stage_log_path(root: Path, stage: str) -> Path:
    """Where the last run of a stage keeps its full output."""
    return root / STATE_DIR / "logs" / f"{stage}.log"


def run_stage(
    stage: str, root: Path, log: Callable[[str], None], env: Mapping[str, str] | None = None
) -> Path:
    """Reproduce one stage with `dvc repro --single-item`: it runs only when its inputs
    changed since dvc.lock, else DVC says it skipped it.

    Args:
        stage: the stage's name (as `stage_order` gives it).
        root: the project root.
        log: called with every output line.
        env: extra environment variables for the stage.

    Returns:
        The stage's log file.

    Raises:
        StageFailed: the stage (or DVC) exited non-zero.
    """
    log_path = stage_log_path(root, stage)
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    returncode, tail = stream_command(cmd, root, log, log_path, env)
    if returncode != 0:
        raise StageFailed(stage, returncode, tail, log_path)
    return log_path


def experiment_overrides(
    preset: str,
    backbones: Sequence[str] | None,
    epochs: int | None,
    per_backbone: Mapping[str, Mapping[str, Any]] | None = None,
    folds: int | None = None,
) -> dict[str, Any]:
    """The params an on-demand run changes: the preset's, then backbones, epochs and folds.

    An epochs value (given or the preset's) applies to every backbone: it also replaces
    the `epochs` of each entry of `training.overrides` that sets one, unless the preset
    drops those entries altogether (the paper's does).

    Args:
        preset: a key of PRESETS.
        backbones: train only these; None or empty keeps params.yaml's.
        epochs: training epochs; None keeps the preset's or params.yaml's.
        per_backbone: params.yaml's `training.overrides`.
        folds: cross-validation folds (`split.folds`: 0 for one split, or at least 3);
            None keeps params.yaml's.

    Raises:
        ValueError: unknown preset or backbone, epochs below 1, or folds 1, 2 or negative.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    overrides = dict(PRESETS[preset])
    if backbones:
        unknown = sorted(set(backbones) - set(BACKBONES))
        if unknown:
            raise ValueError(f"unknown backbones {unknown}; known: {list(BACKBONES)}")
        overrides["training.backbones"] = list(backbones)
    if epochs is not None:
        if epochs < 1:
            raise ValueError(f"epochs must be at least 1, got {epochs}")
        overrides["training.epochs"] = epochs
    if folds is not None:
        if folds != 0 and folds < MIN_FOLDS:
            raise ValueError(f"folds must be 0 (one split) or at least {MIN_FOLDS}, got {folds}")
        overrides["split.folds"] = folds
    if "training.epochs" in overrides and overrides.get("training.overrides") != DROP:
        for name, values in (per_backbone or {}).items():
            if "epochs" in values:
                overrides[f"training.overrides.{name}.epochs"] = overrides["training.epochs"]
    return overrides


def _param_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list | tuple):
        return "[" + ",".join(str(v) for v in value) + "]"
    return str(value)


def experiment_args(name: str, overrides: Mapping[str, Any]) -> list[str]:
    """`dvc exp run` of the whole pipeline as the experiment `name` with these params."""
    cmd = [sys.executable, "-m", "dvc", "exp", "run", "--name", name]
    for key, value in overrides.items():
        cmd += ["--set-param", f"~{key}" if value == DROP else f"{key}={_param_value(value)}"]
    return cmd


@dataclass(frozen=True)
class WorkspaceSnapshot:
    """The files `dvc exp run` rewrites (params.yaml, dvc.lock) as they were, and whether
    git had changes of them staged (an interrupted experiment leaves its own staged)."""

    files: dict[str, bytes | None]
    staged: bool


def _staged(root: Path) -> bool:
    done = subprocess.run(
        ["git", "diff", "--cached", "--quiet", "--", *WORKSPACE_FILES],
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        check=False,
    )
    return done.returncode != 0


def snapshot_workspace(root: Path) -> WorkspaceSnapshot:
    """The workspace files an experiment rewrites, as they are now."""
    files = {
        name: (root / name).read_bytes() if (root / name).is_file() else None
        for name in WORKSPACE_FILES
    }
    return WorkspaceSnapshot(files, _staged(root))


def restore_workspace(root: Path, snapshot: WorkspaceSnapshot, log: Callable[[str], None]) -> bool:
    """Put params.yaml and dvc.lock back as they were (in git's index too) and check their
    outputs out of the DVC cache, so that the next scheduled run starts from the
    configuration it had.

    Returns:
        True when the outputs match dvc.lock again; False when `dvc checkout` could not
        restore them all (the next `dvc repro` rebuilds what is missing).
    """
    for name, content in snapshot.files.items():
        path = root / name
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content)
    if not snapshot.staged and _staged(root):
        subprocess.run(["git", "reset", "-q", "--", *WORKSPACE_FILES], cwd=root, check=False)
    # --force: the experiment's outputs are in the DVC cache and its ref, not lost
    cmd = [sys.executable, "-m", "dvc", "checkout", "--force"]
    returncode, _ = stream_command(cmd, root, log, root / STATE_DIR / "logs" / "checkout.log")
    return returncode == 0


def validation_markdown(summary_path: Path, docs_index: Path) -> str:
    """The validation summary (`reports/validation.json`) as markdown.

    Args:
        summary_path: the summary the validate stage wrote.
        docs_index: the validation results page, named for the details.
    """
    if not summary_path.is_file():
        return f"# Data validation\n\nNo summary at `{summary_path}`: validation has not run."
    summary = json.loads(summary_path.read_text())
    suites = {k: v for k, v in summary.items() if isinstance(v, dict)}
    verdict = "passed" if summary["success"] else "**FAILED**"
    rows = [
        (name, "passed" if s["success"] else "**FAILED**", s["evaluated"], s["failed"])
        for name, s in suites.items()
    ]
    return "\n".join(
        [
            f"# Data validation {verdict}",
            "",
            f"{summary['evaluated']} expectations evaluated, {summary['failed']} failed.",
            "",
            markdown.table(("suite", "result", "evaluated", "failed"), rows),
            "",
            f"Details: the validation results page `{docs_index}`.",
        ]
    )


def _estimate(metric: Mapping[str, Any] | None) -> str:
    value = None if metric is None else metric.get("value")
    if value is None or not math.isfinite(value):
        return "n/a"
    low, high = metric.get("ci_low"), metric.get("ci_high")
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({low:.2f}-{high:.2f})"


def table2_markdown(metrics_path: Path, level: str = "slice") -> str:
    """The paper's Table 2 for this run: every candidate on the test set, with 95% CIs.

    Args:
        metrics_path: `reports/metrics.json` written by the evaluate stage.
        level: "slice" (the paper's unit) or "patient".
    """
    if not metrics_path.is_file():
        return f"# Study results\n\nNo metrics at `{metrics_path}`: evaluation has not run."
    metrics = json.loads(metrics_path.read_text())
    selection = metrics["selection"]
    rows = []
    for name, candidate in metrics["candidates"].items():
        test = candidate["test"][level]
        label = f"**{name}**" if name == selection["selected"] else name
        rows.append((label, *(_estimate(test.get(m)) for m in TABLE2_METRICS)))
    header = ("candidate", *(m if len(m) > 3 else m.upper() for m in TABLE2_METRICS))
    return "\n".join(
        [
            f"# Table 2: test set, {level} level (95% CI)",
            "",
            markdown.table(header, rows),
            "",
            f"Selected on validation by `{selection['metric']}`: **{selection['selected']}**.",
        ]
    )


@dataclass(frozen=True)
class RegistryState:
    """The versions of one registered model and their aliases."""

    name: str
    versions: dict[str, tuple[str, ...]]
    tags: dict[str, dict[str, str]]

    def holder(self, alias: str) -> str | None:
        """The version holding an alias, or None."""
        return next((v for v, aliases in self.versions.items() if alias in aliases), None)


def registry_state(tracking_uri: str, name: str) -> RegistryState:
    """Every version of the registered model `name` with its aliases and tags (empty when
    the model is not registered yet)."""
    from components.registered_models import model_versions

    found = model_versions(tracking_uri, name)
    return RegistryState(
        name=name,
        versions={v.version: v.aliases for v in found},
        tags={v.version: v.tags for v in found},
    )


def registry_markdown(before: RegistryState, after: RegistryState) -> str:
    """What this run did to the registry: new versions with their alias and the promotion
    gate's reason, and which version is champion now."""
    new = sorted(set(after.versions) - set(before.versions), key=int)
    lines = [f"# Model registry: `{after.name}`", ""]
    if not new:
        lines.append("No new version this run (evaluation did not run or registered nothing).")
    for version in new:
        aliases = ", ".join(after.versions[version]) or "no alias"
        tags = after.tags[version]
        lines.append(
            f"- Registered version {version} ({tags.get('candidate', '?')}) as "
            f"**{aliases}**: {tags.get('promotion.reason', 'no promotion record')}"
        )
    champion = after.holder("champion")
    challenger = after.holder("challenger")
    lines += [
        "",
        f"Champion: {'version ' + champion if champion else 'none'} "
        f"(`models:/{after.name}@champion`); challenger: "
        f"{'version ' + challenger if challenger else 'none'}.",
    ]
    return "\n".join(lines)
