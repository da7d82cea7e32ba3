"""A non-editable install works from any folder: a wheel built from this tree (offline, no build isolation) holds
every module of the package, and, installed into a fresh folder, imports every subpackage from there."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ["registry", "families", "families.modeling", "families.modeling.lenet", "model", "freezing",
               "fastpath", "schedule", "data", "hub", "recipe", "cli", "convert", "features"]


def _pip(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    return subprocess.run([sys.executable, "-m", "pip", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel `pip wheel --no-deps --no-build-isolation .` builds from a copy of this tree (the copy keeps the
    build's by-products out of the checkout)."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("building a wheel offline needs setuptools in this environment (pip install setuptools)")
    tmp = tmp_path_factory.mktemp("install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "hf_transfer_cnn", src / "hf_transfer_cnn",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    res = _pip("wheel", "--no-deps", "--no-build-isolation", ".", "-w", str(tmp / "dist"), cwd=src)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheels = list((tmp / "dist").glob("hf_transfer_cnn-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_wheel_holds_every_module_of_the_package(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "hf_transfer_cnn").rglob("*")
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}
    assert modules and modules <= names, sorted(modules - names)
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)  # the hf-transfer-cnn command


def test_installed_wheel_imports_from_any_folder(wheel, tmp_path):
    site = tmp_path / "site"
    res = _pip("install", "--no-deps", "--no-index", "--target", str(site), str(wheel), cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    code = ("import importlib, hf_transfer_cnn\n"
            f"for name in {SUBPACKAGES!r}:\n"
            "    importlib.import_module('hf_transfer_cnn.' + name)\n"
            "print(hf_transfer_cnn.__file__)\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    where = Path(run.stdout.strip().splitlines()[-1]).resolve()
    assert where.is_relative_to(site.resolve()) and not where.is_relative_to(REPO)
