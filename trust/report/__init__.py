"""Self-contained HTML reports (images embedded as base64).

The HTML writer's names are loaded on first use (PEP 562): `trust.report.run_summary`, which a no-op
`trust run` imports for its end panel, must not pull torch and matplotlib in through this package
(2.2 s of a 10 s budget)."""

__all__ = ["Example", "asr_bar_chart", "data_uri", "render_report", "write_report"]


def __getattr__(name: str):
    if name in __all__:
        from trust.report import html

        return getattr(html, name)
    raise AttributeError(f"module 'trust.report' has no attribute {name!r}")
