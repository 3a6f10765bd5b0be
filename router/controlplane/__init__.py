"""The experiment control plane: the live experiment, its operations, canaries,
the ledger of served predictions and feedback, and the report's statistics.

Pure Python but for ``controller`` (the thin Serve deployment around the
service) and ``client`` (the router's typed view of it).
"""

from router.controlplane.experiment import ExperimentState, effective_weights

__all__ = ["ExperimentState", "effective_weights"]
