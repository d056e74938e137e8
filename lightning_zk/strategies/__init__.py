"""Lightning strategies that make training verifiable."""

from .data import UnsupportedDataLoaderError, VerifiableSampler
from .verifiable import VerifiableStrategy

__all__ = ["UnsupportedDataLoaderError", "VerifiableSampler", "VerifiableStrategy"]
