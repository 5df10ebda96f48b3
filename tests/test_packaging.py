"""The two environment descriptions agree, and the package metadata is sane."""
import re
import subprocess
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent


def pins(lines):
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip().lstrip("- ").strip()
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([\w.+\-]+)", line)
        if m:
            out[m.group(1).lower()] = m.group(2)
    return out


def test_requirements_and_environment_agree():
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    env_text = (ROOT / "environment.yml").read_text()
    pip_section = env_text.split("- pip:", 1)[1].splitlines()
    env = pins(pip_section)
    assert req == env
    assert req["torch"] == "2.14.1" and req["torchvision"] == "0.29.1"
    assert re.search(r"python=3\.11", env_text)
    for needed in ["jupyterlab", "ipywidgets", "matplotlib", "seaborn", "nbval", "papermill", "scikit-learn",
                   "tqdm", "pytest", "hypothesis", "scipy"]:
        assert needed in req, needed


def test_every_requirement_is_pinned():
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text().splitlines()]
    assert all("==" in line for line in lines if line)


def test_runtime_dependencies_are_in_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    req = pins((ROOT / "requirements.txt").read_text().splitlines())
    for dep in meta["project"]["dependencies"]:
        assert re.split(r"[<>=!~ ]", dep)[0].lower() in req, dep


def test_ruff_is_clean():
    """The code, tests, benchmarks and notebooks pass ruff with the config in pyproject.toml."""
    proc = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-1000:]
