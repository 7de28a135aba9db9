"""A workflow file that runs itself at import time (no ``__main__`` guard) fails with a clear
error under ``shoal run``, instead of agents importing it and starting agents without end."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.usefixtures("no_leaked_children")]


def test_a_module_that_starts_pools_on_import_is_refused_in_agents(tmp_path: Path) -> None:
    script = tmp_path / "unguarded.py"
    script.write_text(
        textwrap.dedent(
            """
            from shoal import Context, run, step, workflow

            @workflow(name="unguarded")
            class Unguarded:
                @step()
                async def go(self, ctx: Context, x: int) -> int:
                    return x + 1

            print(run(Unguarded, 1))  # no `if __name__ == "__main__":`
            """
        )
    )
    done = subprocess.run(
        [sys.executable, "-m", "shoal.cli", "run", str(script), "--input", "1"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert '__name__ == "__main__"' in done.stderr
