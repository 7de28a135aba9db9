"""Workflows on pools: decorators that build immutable specs, and the runner that executes them."""

from shoal.workflow.spec import (
    MapReduceSpec,
    StepSpec,
    WorkflowSpec,
    mapreduce,
    spec_of,
    step,
    workflow,
)

__all__ = ["MapReduceSpec", "StepSpec", "WorkflowSpec", "mapreduce", "spec_of", "step", "workflow"]
