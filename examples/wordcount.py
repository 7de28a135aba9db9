"""A mapreduce: count the words of many files on warm agents, then merge the counts.

``python examples/wordcount.py`` counts this project's own Markdown and Python files;
``shoal run examples/wordcount.py --input '["README.md", "examples/demo.py"]'`` counts yours.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from pathlib import Path

from shoal import Context, Runtime, mapreduce

WORD = re.compile(r"[a-z][a-z_']+")


def merge(counts: list[dict[str, int]]) -> dict[str, int]:
    """The reduce: add the per-file counts and keep the twenty most common words."""
    total: Counter[str] = Counter()
    for c in counts:
        total.update(c)
    return dict(total.most_common(20))


@mapreduce(pool_size=2, max_parallel=8, reduce=merge)
async def count_words(ctx: Context, path: str) -> dict[str, int]:
    # Blocking I/O is fine here: an agent serves one call at a time, off the caller's loop.
    text = Path(path).read_text(encoding="utf-8", errors="replace").lower()  # noqa: ASYNC240
    return dict(Counter(WORD.findall(text)))


def project_files() -> list[str]:
    root = Path(__file__).resolve().parent.parent
    return sorted(str(p) for p in [*root.glob("*.md"), *root.rglob("src/**/*.py")])


async def main() -> None:
    files = project_files()
    async with Runtime() as rt:
        top = await rt.run(count_words, files)
    print(f"{len(files)} files; most common words:")
    for word, n in top.items():
        print(f"  {n:6d}  {word}")


if __name__ == "__main__":
    asyncio.run(main())
