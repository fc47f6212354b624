"""The method registry: `finetune.method.name` -> the method's config class (torch-free).

One line per method. The config class names its `Method` implementation, imported only when a
method is built, so `trust.config` can build the `finetune.method` union from here without torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trust.utils.registry import Registry

if TYPE_CHECKING:
    from trust.methods.base import Method
    from trust.methods.config import MethodConfig

METHODS: Registry[type["MethodConfig"]] = Registry("method", "finetune.method.name")
METHODS.add("trust", "trust.methods.trust.config:TrustConfig")
METHODS.add("esd", "trust.methods.esd.config:EsdConfig")
METHODS.add("salun", "trust.methods.salun.config:SalunConfig")
METHODS.add("conceptprune", "trust.methods.conceptprune.config:ConceptPruneConfig")
METHODS.add("full", "trust.methods.full.config:FullConfig")
METHODS.add("ant", "trust.methods.ant.config:AntConfig")
METHODS.add("ant_fusion", "trust.methods.ant_fusion.config:AntFusionConfig")
METHODS.add("uce", "trust.methods.uce.config:UceConfig")
METHODS.add("rece", "trust.methods.rece.config:ReceConfig")


def method_config(name: str) -> type["MethodConfig"]:
    return METHODS.get(name)


def method_class(name: str) -> type["Method"]:
    """The `Method` subclass of `name` (imports torch)."""
    import importlib

    module, attr = method_config(name).implementation.split(":")
    return getattr(importlib.import_module(module), attr)
