"""Metrics: attack success rates, preservation of kept concepts, Fréchet distances."""

from trust.metrics.asr import asr, asr_summary, pre_asr
from trust.metrics.frechet import (
    WORLD_FD_NAME, FidelityError, InceptionFeatures, fid, frechet_distance, world_frechet,
)
from trust.metrics.preservation import mean_drop, preservation, rate

__all__ = ["asr", "asr_summary", "pre_asr", "WORLD_FD_NAME", "FidelityError", "InceptionFeatures", "fid",
           "frechet_distance", "world_frechet", "mean_drop", "preservation", "rate"]
