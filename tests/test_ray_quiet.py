"""`ppllm run --ray --quiet` on a local cluster of its own: nothing on stderr, no process left.
(Runs after tests/test_ray.py has shut its cluster down.)"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'ppllm[ray]' (make test installs it)")

ROOT = Path(__file__).resolve().parent.parent


def test_ray_run_is_quiet_and_leaves_nothing_behind(tmp_path) -> None:
    from test_ray import ray_processes

    assert ray_processes() == []
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}
    proc = subprocess.run(
        [sys.executable, "-m", "ppllm.cli", "run", str(ROOT / "inference" / "toy_smc.toml"), "--out",
         str(tmp_path / "o"), "--quiet", "--ray", "--actors", "2", "--set", "run.plots=1"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stderr == "", proc.stderr[-2000:]
    assert len((tmp_path / "o" / "record.jsonl").read_text().splitlines()) == 4
    deadline = time.time() + 20
    while ray_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert ray_processes() == []
