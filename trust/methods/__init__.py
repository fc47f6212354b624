"""Unlearning methods behind one interface (`Method`, base.py) and their registry.

trust (trust_method.py), esd, salun, conceptprune, full; concept scorers for TRUST's
saliency in scorers.py; losses, saliency masks and training data shared by all.
"""

from trust.methods.base import Method
from trust.methods.registry import METHODS, build_method, method_class

__all__ = ["METHODS", "Method", "build_method", "method_class"]
