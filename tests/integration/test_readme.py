"""The README's Python examples are programs: each runs as ``python file.py``.

A block whose first line is a comment naming a file (``# scoring.py``) is written there for
the next block to import; every other block is run, in a fresh folder, and must exit 0.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NAMED = re.compile(r"^# (\w+\.py)\b")


def programs() -> list[tuple[str, dict[str, str], str]]:
    found, modules = [], {}
    for i, match in enumerate(BLOCK.finditer(README.read_text())):
        code = match.group(1)
        named = NAMED.match(code)
        if named and "__main__" not in code and "asyncio.run" not in code:
            modules[named.group(1)] = code  # a module for a later block
            continue
        found.append((f"block{i}", dict(modules), code))
    return found


def test_the_readme_has_examples() -> None:
    assert len(programs()) >= 4


@pytest.mark.timeout(300)
@pytest.mark.parametrize(("name", "modules", "code"), programs(), ids=[p[0] for p in programs()])
@pytest.mark.usefixtures("no_leaked_children")
def test_a_readme_example_runs(
    name: str, modules: dict[str, str], code: str, tmp_path: Path
) -> None:
    for filename, text in modules.items():
        (tmp_path / filename).write_text(text)
    script = tmp_path / "example.py"
    script.write_text(code)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
        env=env,
        check=False,
    )
    assert done.returncode == 0, f"{name} failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
