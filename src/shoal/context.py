"""The context every step receives: which run, which step, which attempt, and the run's input.

Standard library only: it travels to agents with every call, and agents import it cheaply.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from typing import Any

_KEPT_INPUTS = 16  # run inputs an agent keeps; an evicted one is simply sent again


class _Unsent:
    """Stands for a run's input left out of a call because the agent already holds it."""

    def __reduce__(self) -> str:
        return "UNSENT"  # pickled by reference: the one instance on both sides

    def __repr__(self) -> str:
        return "<input held by the agent>"


UNSENT = _Unsent()
_inputs: OrderedDict[str, Any] = OrderedDict()  # run id -> input, in an agent (or here)


class InputMissing(Exception):
    """The agent no longer holds the run's input: the caller sends the call again with it."""


@dataclass(frozen=True)
class Context:
    """What a step knows about the run it is part of.

    ``input`` is the run's input; ``item_index`` is the position of the item a parallel step is
    processing (None otherwise); ``attempt`` counts from 1 and grows when a lost agent's call
    is retried.
    """

    run_id: str
    workflow: str
    step: str = ""
    input: Any = None
    attempt: int = 1
    item_index: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def logger(self) -> logging.Logger:
        """A logger named after the workflow and step (``shoal.workflow.<workflow>.<step>``)."""
        name = f"shoal.workflow.{self.workflow}"
        return logging.getLogger(f"{name}.{self.step}" if self.step else name)

    def for_step(self, step: str, *, item_index: int | None = None, attempt: int = 1) -> Context:
        return replace(self, step=step, item_index=item_index, attempt=attempt)

    def without_input(self) -> Context:
        """This context with the run's input left out, for an agent that holds it already: a
        large input then crosses to each agent once per run, not once per item."""
        return replace(self, input=UNSENT)

    def resolved(self) -> Context:
        """In an agent: the context with its input, kept from the run's first call here.

        Raises :class:`InputMissing` if the agent no longer holds it.
        """
        if self.input is UNSENT:
            try:
                value = _inputs[self.run_id]
            except KeyError:
                raise InputMissing(self.run_id) from None
            _inputs.move_to_end(self.run_id)
            return replace(self, input=value)
        _inputs[self.run_id] = self.input
        _inputs.move_to_end(self.run_id)
        while len(_inputs) > _KEPT_INPUTS:
            _inputs.popitem(last=False)
        return self
