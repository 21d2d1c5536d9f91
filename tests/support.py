"""Helpers shared by the tests (not fixtures: plain functions)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgefr.paths import shared_dir

CELEBA = shared_dir() / "faces" / "celeba"


def write_script(path: Path, text: str) -> Path:
    """An executable script at `path`: a stand-in for a program the code under test runs."""
    path.write_text(text)
    path.chmod(0o755)
    return path


def run_edgefr(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `edgefr` entry point in a subprocess, as a user would; text output, no exception on failure."""
    return subprocess.run([sys.executable, "-m", "edgefr.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    """A user error: non-zero exit, a single `error:` line on stderr naming what was wrong, no traceback."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])


def first_identities(root: Path, count: int) -> Path:
    """An ImageFolder of links to the first `count` CelebA identities (about 21 real faces each)."""
    if not CELEBA.is_dir():
        pytest.skip("../shared/faces/celeba is absent")
    root.mkdir(parents=True, exist_ok=True)
    for identity in sorted(CELEBA.iterdir())[:count]:
        (root / identity.name).symlink_to(identity)
    return root


def table_at_speed(table, factor: float, path: Path, host: dict | None = None):
    """A copy of latency table `table` as if measured on a machine `factor` times slower: every time scaled; `host`
    (CPU name, runtime version) replaces the machine it records."""
    import copy

    doctored = copy.deepcopy(table)
    doctored.device.update(host or {})
    for record in [*doctored.entries.values(), *doctored.contexts.values()]:
        for key in ("ms", "measured_ms"):
            if key in record:
                record[key] *= factor
        record["passes"] = [ms * factor for ms in record.get("passes", [])]
    if doctored.calibration:
        doctored.calibration["offset_ms"] *= factor
    doctored.save(path)
    return doctored
