"""Packaging: the wheel carries the templates and static files and works installed, outside the repository.

The fresh virtual environment gets the wheel alone (`pip install --no-deps`); torch and the other
heavy dependencies come from this environment's site-packages through a `.pth` file written after
the install, so nothing is downloaded and pip never sees (or touches) this environment's packages.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import debugatlas

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, cwd, timeout=600):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    return subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("build")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"  # a clean copy, so the build leaves nothing in the working tree
    shutil.copytree(ROOT / "debugatlas", src / "debugatlas", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    done = _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp / "dist", src], tmp)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (path,) = (tmp / "dist").glob("debugatlas-*.whl")
    return path


def test_wheel_carries_templates_static_files_and_the_version(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for asset in ("report/templates/index.html", "report/templates/diff.html",
                  "report/static/report.css", "report/static/report.js"):
        assert f"debugatlas/{asset}" in names
    packaged = {p.name for p in (ROOT / "debugatlas" / "report" / "templates").glob("*.html")}
    assert packaged <= {Path(n).name for n in names if n.startswith("debugatlas/report/templates/")}
    assert not any(n.endswith(".pyc") or "/tests/" in n for n in names)
    assert wheel.name == f"debugatlas-{debugatlas.__version__}-py3-none-any.whl"
    metadata = zipfile.ZipFile(wheel).read(f"debugatlas-{debugatlas.__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {debugatlas.__version__}\n" in metadata
    entry_points = zipfile.ZipFile(wheel).read(f"debugatlas-{debugatlas.__version__}.dist-info/entry_points.txt")
    assert b"debugatlas = debugatlas.cli:main" in entry_points


def test_installed_wheel_runs_demo_help_and_a_tiny_analysis(wheel, tmp_path):
    venv = tmp_path / "venv"
    done = _run([sys.executable, "-m", "venv", "--without-pip", venv], tmp_path)
    assert done.returncode == 0, done.stderr
    python, script = venv / "bin" / "python", venv / "bin" / "debugatlas"
    done = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
                 "--disable-pip-version-check", wheel], tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                     tmp_path).stdout.strip())
    heavy = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "_heavy_dependencies.pth").write_text("\n".join(sorted(heavy)) + "\n")

    outside = tmp_path / "elsewhere"  # not the repository: only the installed package can answer
    outside.mkdir()
    probe = _run([python, "-c", "import debugatlas, importlib.metadata as m; "
                  "print(debugatlas.__file__); print(m.version('debugatlas')); print(debugatlas.__version__)"], outside)
    assert probe.returncode == 0, probe.stderr
    file, dist_version, version = probe.stdout.split()
    assert Path(file).is_relative_to(site) and dist_version == version == debugatlas.__version__

    demo = _run([script, "demo", "--help"], outside)
    assert demo.returncode == 0 and "--scenario" in demo.stdout, demo.stderr

    rng = np.random.default_rng(0)
    for k, name in enumerate(("a", "b", "c")):
        (outside / "data" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 128, (24, 24, 3))
            pixels[..., k] += 127
            Image.fromarray(pixels.astype(np.uint8)).save(outside / "data" / name / f"{i}.png")
    options = ["layout=pca", "render=false", "patches=false", "grid_size=4", "grid_sizes=4", "n_pairs=1",
               "n_examples=0"]
    done = _run([script, "analyze", "--model", "debugatlas.models:SmallCNN", "--model-args", "in_channels=3",
                 "num_classes=3", "width=4", "--data", "data", "--layer", "layer2", "--out", "run",
                 *[x for o in options for x in ("--option", o)]], outside)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((outside / "run" / "summary.json").read_text())
    assert summary["classes"] == ["a", "b", "c"] and summary["config"]["grid_size"] == 4
    page = (outside / "run" / "index.html").read_text()
    assert "<style" in page and "http://" not in page  # the packaged CSS inlined, nothing fetched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["elsewhere", "venv"]
