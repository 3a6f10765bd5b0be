"""Hand-made per-window statistics for the classical (scikit-learn) model.

``window_stats`` is a plain module-level function so that a pipeline holding it
in a ``FunctionTransformer`` pickles by reference and unpickles anywhere this
package is importable.
"""

from __future__ import annotations

import numpy as np

__all__ = ["N_STATS", "window_stats"]

N_STATS = 9  # statistics per signal


def window_stats(X: np.ndarray) -> np.ndarray:
    """(n, window, channels) -> (n, (channels + 3) * N_STATS) float32 features.

    Per channel and per magnitude of each 3-axis sensor: mean, std, min, max,
    energy of the detrended signal, dominant FFT bin (DC excluded), its share of
    the spectral energy, mean absolute first difference and the range.
    """
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 3:
        raise ValueError(f"window_stats expects (n, window, channels), got shape {X.shape}")
    n, _, c = X.shape
    signals = [X]
    if c % 3 == 0:
        # Orientation-free magnitudes of each 3-axis sensor.
        groups = X.reshape(n, X.shape[1], c // 3, 3)
        signals.append(np.linalg.norm(groups, axis=-1))
    S = np.concatenate(signals, axis=2)  # (n, w, c')
    mean = S.mean(axis=1)
    std = S.std(axis=1)
    lo = S.min(axis=1)
    hi = S.max(axis=1)
    centred = S - mean[:, None, :]
    energy = (centred**2).mean(axis=1)
    spec = np.abs(np.fft.rfft(centred, axis=1))[:, 1:, :] ** 2
    dom_bin = spec.argmax(axis=1).astype(np.float32) + 1.0
    dom_share = spec.max(axis=1) / (spec.sum(axis=1) + 1e-9)
    mad = np.abs(np.diff(S, axis=1)).mean(axis=1)
    feats = np.concatenate(
        [mean, std, lo, hi, np.log1p(energy), dom_bin, dom_share, mad, hi - lo], axis=1
    )
    return feats.astype(np.float32)
