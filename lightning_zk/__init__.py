"""lightning-zk: verifiable neural-network training for PyTorch Lightning.

Importing the package registers ``VerifiableStrategy`` under the strategy name ``"verifiable"``.
The lower layers (``rounding``, ``fixed``, ``ledger``, ``zk``) do not import Lightning.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("lightning-zk")
except _metadata.PackageNotFoundError:  # running from a source tree
    __version__ = "0.0.0+local"

from .callbacks import CommitCallback, ProofCallback  # noqa: E402
from .ledger.merkle import LedgerError  # noqa: E402
from .ledger.rundir import RunDirectory, RunDirectoryError  # noqa: E402
from .rounding.precision import GridSpec, PrecisionError  # noqa: E402
from .rounding.taint import UnroundedValueWarning  # noqa: E402
from .rounding.threshold import ThresholdError, ThresholdPolicy  # noqa: E402
from .strategies import VerifiableStrategy  # noqa: E402
from .strategies.calibrate import calibrate_threshold  # noqa: E402

__all__ = [
    "CommitCallback",
    "GridSpec",
    "LedgerError",
    "PrecisionError",
    "ProofCallback",
    "RunDirectory",
    "RunDirectoryError",
    "ThresholdError",
    "ThresholdPolicy",
    "UnroundedValueWarning",
    "VerifiableStrategy",
    "__version__",
    "calibrate_threshold",
]
