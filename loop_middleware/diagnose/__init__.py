"""Stage 4: diagnose root causes per intent x failure signal, grouped by failure mode, with numbers."""

from ._diagnose import diagnose, diagnosis_id
from ._hypotheses import FAILURE_MODES, CellContext, Hypothesis, explain, find_quote
from ._llm import DiagnosisWriter, Quote, RootCause
from ._stats import CellStat, DiagnoseConfig, cell_table, significant_cells

__all__ = [
    "FAILURE_MODES",
    "CellContext",
    "CellStat",
    "DiagnoseConfig",
    "DiagnosisWriter",
    "Hypothesis",
    "Quote",
    "RootCause",
    "cell_table",
    "diagnose",
    "diagnosis_id",
    "explain",
    "find_quote",
    "significant_cells",
]
