"""The context every step receives: which run, which step, which attempt, and the run's input.

Standard library only: it travels to agents with every call, and agents import it cheaply.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any


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
