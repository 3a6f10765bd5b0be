"""Framework adapters behind one Backend contract: a batch in, a batch of the kind's outputs out.

Importing this package imports no framework; ``load_backend`` imports the one a
manifest names, when a replica starts.
"""

from deployments.backends.base import Backend, BaseBackend, check_batch, load_backend

__all__ = ["Backend", "BaseBackend", "check_batch", "load_backend"]
