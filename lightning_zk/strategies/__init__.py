"""Lightning strategies that make training verifiable."""

from .data import UnsupportedDataLoaderError, VerifiableSampler
from .ddp import ShardedRunError, VerifiableDDPStrategy, VerifiableShardedStrategy
from .verifiable import VerifiableStrategy

__all__ = ["ShardedRunError", "UnsupportedDataLoaderError", "VerifiableDDPStrategy", "VerifiableSampler",
           "VerifiableShardedStrategy", "VerifiableStrategy"]
