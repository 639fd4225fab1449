"""Stage 4: diagnose root causes per intent x failure signal, grouped by failure mode, with numbers."""

from ._at_scale import DEFAULT_SAMPLE_SIZE, diagnose_store, sample_thread_ids
from ._diagnose import diagnose, diagnosis_id
from ._hypotheses import FAILURE_MODES, CellContext, Hypothesis, explain, find_quote
from ._llm import DiagnosisWriter, Quote, RootCause
from ._population import Population
from ._stats import CellStat, DiagnoseConfig, cell_table, significant_cells

__all__ = [
    "DEFAULT_SAMPLE_SIZE",
    "FAILURE_MODES",
    "CellContext",
    "CellStat",
    "DiagnoseConfig",
    "DiagnosisWriter",
    "Hypothesis",
    "Population",
    "Quote",
    "RootCause",
    "cell_table",
    "diagnose",
    "diagnose_store",
    "diagnosis_id",
    "explain",
    "find_quote",
    "sample_thread_ids",
    "significant_cells",
]
