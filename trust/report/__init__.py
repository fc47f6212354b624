"""Self-contained HTML reports (images embedded as base64)."""

from trust.report.html import Example, asr_bar_chart, data_uri, render_report, write_report

__all__ = ["Example", "asr_bar_chart", "data_uri", "render_report", "write_report"]
