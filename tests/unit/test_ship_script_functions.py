"""Functions of the user's script: pickled once, and again whenever what they read may differ."""

from __future__ import annotations

import pickle
from typing import Any

from shoal.backends import _ship

SCRIPT = """
import math
LIMIT = 3
ITEMS = [1, 2]
def helper(x):
    return x + LIMIT
def uses_helper(x, scale=2):
    return math.floor(helper(x)) * scale
def uses_list():
    return len(ITEMS)
def make_counter(start):
    def counter():
        return start
    return counter
"""


def _script() -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(SCRIPT, "script.py", "exec"), namespace)
    return namespace


def _run(token: tuple[int | None, bytes], *args: Any) -> Any:
    return pickle.loads(token[1])(*args)


def test_a_script_function_is_pickled_once_while_nothing_it_reads_changes() -> None:
    ns = _script()
    first = _ship.function_token(ns["uses_helper"])
    assert _ship.function_token(ns["uses_helper"]) is first  # the same bytes, not re-pickled
    assert _run(first, 1) == 8


def test_rebinding_a_global_read_through_a_helper_is_seen() -> None:
    ns = _script()
    first = _ship.function_token(ns["uses_helper"])
    ns["LIMIT"] = 10
    second = _ship.function_token(ns["uses_helper"])
    assert second[0] != first[0]
    assert _run(second, 1) == 22


def test_rebinding_the_helper_itself_or_a_default_is_seen() -> None:
    ns = _script()
    fn = ns["uses_helper"]
    first = _ship.function_token(fn)
    exec("def helper(x):\n    return x - 1\n", ns)
    assert _run(_ship.function_token(fn), 5) == 8
    fn.__defaults__ = (3,)
    token = _ship.function_token(fn)
    assert token[0] != first[0]
    assert _run(token, 5) == 12


def test_a_mutable_global_is_sent_with_its_current_contents_at_every_call() -> None:
    ns = _script()
    assert _run(_ship.function_token(ns["uses_list"])) == 2
    ns["ITEMS"].append(3)
    assert _run(_ship.function_token(ns["uses_list"])) == 3


def test_closures_are_keyed_by_their_cells() -> None:
    ns = _script()
    one, two = ns["make_counter"](1), ns["make_counter"](2)
    assert _run(_ship.function_token(one)) == 1
    assert _run(_ship.function_token(two)) == 2
    assert _ship.function_token(one)[0] != _ship.function_token(two)[0]
