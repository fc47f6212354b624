"""Benchmarks (not part of the installed library): scripts at this level, their code in lib/."""
