"""The multi-node Ray cluster cases (``ray_cluster_cases.py``), each run in a fresh interpreter.

In one process, Ray cannot create actors on a cluster after a local instance was used and shut
down (the actors die unborn: "all references to the actor were removed"); the other Ray tests
use a local instance, so the cluster cases run in a pytest of their own.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]


def test_agents_on_a_real_three_node_cluster() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT)])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
            str(Path(__file__).with_name("ray_cluster_cases.py")),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=400,
        env=env,
    )
    summary = [line for line in done.stdout.splitlines() if "timings" in line]
    print("\n".join(summary))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"^7 passed", done.stdout, re.M), done.stdout[-3000:]
