"""The layering contracts of pyproject.toml ([tool.importlinter]) hold, and can fail: a copy
of the code with one planted import breaks them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.tool_env import project_env

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "flows", "myelomet")


def _copy(target: Path) -> Path:
    """The project's packages and pyproject.toml under `target`."""
    for package in PACKAGES:
        shutil.copytree(
            ROOT / package, target / package, ignore=shutil.ignore_patterns("__pycache__")
        )
    shutil.copy2(ROOT / "pyproject.toml", target / "pyproject.toml")
    return target


def _lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # lint-imports puts its working directory first on sys.path: it reads the copy's code
    return subprocess.run(
        ["lint-imports", "--no-cache"],
        cwd=root,
        env=project_env(drop_prefixes=("PYTHONPATH",)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_project_keeps_every_layering_contract():
    done = _lint_imports(ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(
    ("module", "planted", "contract"),
    [
        ("components/data/split.py", "import prefect", "No component imports Prefect"),
        (
            "components/data/split.py",
            "import components.training.folds",
            "Stage packages import only downward",
        ),
        ("components/evaluation/metrics.py", "import mlflow", "MLflow is imported only by"),
        ("components/tracking.py", "import components.data.split", "tracking and the leaves"),
        ("components/config.py", "import components.checks.results", "tracking and the leaves"),
        ("components/training/plan.py", "import flows.train", "flows above the components"),
    ],
)
def test_a_planted_import_breaks_its_contract(tmp_path, module, planted, contract):
    copy = _copy(tmp_path)
    path = copy / module
    path.write_text(f"{path.read_text()}\n{planted}  # planted by the test\n")
    done = _lint_imports(copy)
    assert done.returncode != 0, done.stdout
    broken = done.stdout.split("Broken contracts", 1)[-1]
    assert contract in broken and module.removesuffix(".py").replace("/", ".") in broken
