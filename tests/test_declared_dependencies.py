"""Every package the project's code imports is declared in pyproject.toml, and nothing
declared goes unused."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "flows", "myelomet")
CODE = (*PACKAGES, "tests", "bench")
# Declared for what they plug into, not imported by name: pydicom's decoder plugins.
PLUGINS = {"pylibjpeg", "pylibjpeg-openjpeg", "pylibjpeg-libjpeg", "pylibjpeg-rle"}


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imported_top_level(root: Path = ROOT, folders=CODE) -> set[str]:
    """Top-level names of every module imported anywhere in the folders' code."""
    names = set()
    for folder in folders:
        for path in (root / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names.update(a.name.split(".")[0] for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names.add(node.module.split(".")[0])
    return names - set(sys.stdlib_module_names) - set(CODE)


def imported_distributions(names: set[str]) -> dict[str, set[str]]:
    """Module name -> the installed distributions that provide it."""
    providers = packages_distributions()
    return {name: {_normalise(d) for d in providers.get(name, [])} for name in names}


def declared(pyproject: str | None = None) -> tuple[set[str], set[str]]:
    """(required, optional) distribution names of pyproject.toml (or of its text)."""
    text = pyproject if pyproject is not None else (ROOT / "pyproject.toml").read_text()
    project = tomllib.loads(text)["project"]

    def names(requirements):
        return {_normalise(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}

    extras = project.get("optional-dependencies", {}).values()
    optional = set().union(*(names(r) for r in extras))
    return names(project["dependencies"]), optional


def undeclared(imported: set[str], pyproject: str | None = None) -> dict[str, set[str]]:
    """Imported modules whose providing distributions are declared nowhere."""
    required, optional = declared(pyproject)
    return {
        module: providers
        for module, providers in imported_distributions(imported).items()
        if not providers & (required | optional)
    }


def test_every_imported_package_is_declared():
    missing = undeclared(imported_top_level())
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_every_required_package_is_imported():
    required, _ = declared()
    used = set().union(*imported_distributions(imported_top_level(folders=PACKAGES)).values())
    assert not required - used - PLUGINS, "declared in pyproject.toml but never imported"


def test_the_check_sees_an_undeclared_import(tmp_path):
    (tmp_path / "components").mkdir()
    (tmp_path / "components" / "x.py").write_text("def f():\n    import yaml, requests\n")
    imported = imported_top_level(tmp_path, ("components",))
    assert imported == {"yaml", "requests"}
    pyproject = '[project]\ndependencies = ["PyYAML>=6"]\n'
    assert set(undeclared(imported, pyproject)) == {"requests"}
