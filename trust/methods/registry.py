"""The method registry: `finetune.method` -> class. Every class implements `Method` (base.py)."""

from __future__ import annotations

from trust.methods.ant import AntMethod
from trust.methods.base import Method
from trust.methods.conceptprune import ConceptPruneMethod
from trust.methods.esd import EsdMethod
from trust.methods.full import FullMethod
from trust.methods.lora_fusion import AntFusionMethod
from trust.methods.salun import SalunMethod
from trust.methods.trust_method import TrustMethod

METHODS: dict[str, type[Method]] = {
    "trust": TrustMethod,
    "esd": EsdMethod,
    "salun": SalunMethod,
    "conceptprune": ConceptPruneMethod,
    "full": FullMethod,
    "ant": AntMethod,
    "ant_fusion": AntFusionMethod,
}


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise ValueError(f"unknown finetune.method {name!r}; methods: {', '.join(METHODS)}")
    return METHODS[name]


def build_method(name: str, parts, data, ft, loc, initial_mask=None, keep=None, scorer=None) -> Method:
    return method_class(name)(parts, data, ft, loc, initial_mask, keep=keep, scorer=scorer)
