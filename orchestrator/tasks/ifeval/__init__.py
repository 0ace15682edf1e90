"""IFEval with official-identical verdicts (Google's checker classes, our evaluation loop)."""

from orchestrator.tasks.ifeval.task import (
    IFEvalChecker,
    IFEvalTask,
    UnknownInstructionError,
    aggregate_verdicts,
    load_ifeval,
    loose_variants,
)

__all__ = [
    "IFEvalChecker",
    "IFEvalTask",
    "UnknownInstructionError",
    "aggregate_verdicts",
    "load_ifeval",
    "loose_variants",
]
