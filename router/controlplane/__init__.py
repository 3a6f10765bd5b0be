"""The experiment control plane: the live experiment, its typed operations, the
service that applies them (store and clock injected), canaries, the ledger of
served predictions and feedback, and the report's statistics.

Pure Python but for ``controller`` (the thin Serve deployment around the
service); ``client`` (the router's typed view of it) touches Ray only through
the handle it is given. Kept apart from the data plane so that the request
path never depends on how the experiment is decided.
"""

from router.controlplane.experiment import ExperimentState, effective_weights

__all__ = ["ExperimentState", "effective_weights"]
