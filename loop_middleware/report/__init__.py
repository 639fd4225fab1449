"""The loop as a person sees it: one self-contained HTML report (plotly charts inlined)."""

from ._model import (
    FailureModeTimeline,
    FixMeasurement,
    HealthEvent,
    LoopHealth,
    MeasurementPoint,
    ReportData,
    SignalCell,
    Totals,
)
from ._render import render_html, render_report, thread_anchor

__all__ = [
    "FailureModeTimeline",
    "FixMeasurement",
    "HealthEvent",
    "LoopHealth",
    "MeasurementPoint",
    "ReportData",
    "SignalCell",
    "Totals",
    "render_html",
    "render_report",
    "thread_anchor",
]
