"""Offline scoring on Ray Data: ``abserve batch-predict`` and ``abserve replay``.

``core`` is pure (input decoding, error rows, the experiment's arm for a frame of user
keys, the replay statistics): no Ray import, unit-tested in milliseconds. ``scoring`` is
the Ray Data glue (the actor pool that loads a version through ``deployments.backends``,
reading the inputs and the prediction log, writing Parquet).
"""

from serve.offline.core import Decoded, RowError

__all__ = ["Decoded", "RowError"]
