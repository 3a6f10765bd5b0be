"""Synthetic phone-sensor windows for human activity recognition (numpy only).

Each window is 50 samples at 20 Hz (2.5 s) of 9 channels: accelerometer x, y, z
(m/s^2), gyroscope x, y, z (rad/s) and magnetometer x, y, z (uT). Classes differ
in step or vibration frequency, amplitude, noise level, how the phone is held
(gravity direction) and magnetic disturbance. Parameter ranges overlap on
purpose: the vehicles (Car, Bus, Train, Subway) are partly confusable, so models
have something to learn and do not all score 1.0.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "CHANNELS",
    "CHANNEL_NAMES",
    "CLASS_LABELS",
    "RATE_HZ",
    "WINDOW",
    "make_windows",
    "sample_window",
]

CLASS_LABELS: tuple[str, ...] = (
    "Still",
    "Walking",
    "Running",
    "Biking",
    "Car",
    "Bus",
    "Train",
    "Subway",
)
CHANNEL_NAMES: tuple[str, ...] = (
    "acc_x",
    "acc_y",
    "acc_z",
    "gyro_x",
    "gyro_y",
    "gyro_z",
    "mag_x",
    "mag_y",
    "mag_z",
)
CHANNELS = 9
WINDOW = 50
RATE_HZ = 20.0
_G = 9.81
_EARTH_FIELD_UT = 45.0

# Per class: (low, high) ranges drawn uniformly per window.
#   freq: dominant motion frequency (Hz); acc: its acceleration amplitude;
#   gyro: rotation amplitude; noise: broadband acc noise; gyro_noise;
#   sway: low-frequency (0.15-0.6 Hz) acceleration amplitude;
#   mag_noise: magnetic disturbance; mag_drift: field change over the window (uT);
#   bump: rate (Hz) of periodic jolts (rail joints, road), 0 for none;
#   grav: nominal gravity direction in the phone frame and its spread.
_PARAMS: dict[str, dict[str, tuple[float, float]]] = {
    "Still": dict(
        freq=(0.5, 4.0),
        acc=(0.0, 0.04),
        gyro=(0.0, 0.01),
        noise=(0.01, 0.05),
        gyro_noise=(0.002, 0.01),
        sway=(0.0, 0.02),
        mag_noise=(0.1, 0.5),
        mag_drift=(0.0, 0.5),
        bump=(0.0, 0.0),
    ),
    "Walking": dict(
        freq=(1.6, 2.3),
        acc=(1.5, 3.5),
        gyro=(0.4, 1.0),
        noise=(0.2, 0.5),
        gyro_noise=(0.05, 0.15),
        sway=(0.0, 0.3),
        mag_noise=(0.3, 1.0),
        mag_drift=(0.0, 3.0),
        bump=(0.0, 0.0),
    ),
    "Running": dict(
        freq=(2.4, 3.3),
        acc=(4.0, 9.0),
        gyro=(1.0, 2.5),
        noise=(0.4, 1.0),
        gyro_noise=(0.1, 0.3),
        sway=(0.0, 0.5),
        mag_noise=(0.3, 1.0),
        mag_drift=(0.0, 4.0),
        bump=(0.0, 0.0),
    ),
    "Biking": dict(
        freq=(1.0, 1.6),
        acc=(0.6, 1.8),
        gyro=(0.6, 1.6),
        noise=(0.2, 0.6),
        gyro_noise=(0.05, 0.2),
        sway=(0.1, 0.5),
        mag_noise=(0.3, 1.2),
        mag_drift=(1.0, 6.0),
        bump=(0.0, 0.0),
    ),
    "Car": dict(
        freq=(6.0, 9.0),
        acc=(0.05, 0.25),
        gyro=(0.0, 0.06),
        noise=(0.15, 0.45),
        gyro_noise=(0.01, 0.05),
        sway=(0.2, 0.9),
        mag_noise=(0.3, 1.5),
        mag_drift=(0.5, 5.0),
        bump=(0.0, 0.0),
    ),
    "Bus": dict(
        freq=(4.0, 7.0),
        acc=(0.05, 0.3),
        gyro=(0.01, 0.08),
        noise=(0.3, 0.7),
        gyro_noise=(0.02, 0.07),
        sway=(0.5, 1.4),
        mag_noise=(0.5, 2.0),
        mag_drift=(0.5, 6.0),
        bump=(0.0, 0.0),
    ),
    "Train": dict(
        freq=(2.0, 5.0),
        acc=(0.02, 0.15),
        gyro=(0.0, 0.04),
        noise=(0.08, 0.3),
        gyro_noise=(0.01, 0.04),
        sway=(0.1, 0.6),
        mag_noise=(1.0, 4.0),
        mag_drift=(2.0, 12.0),
        bump=(0.6, 1.6),
    ),
    "Subway": dict(
        freq=(2.0, 5.0),
        acc=(0.02, 0.2),
        gyro=(0.0, 0.05),
        noise=(0.12, 0.4),
        gyro_noise=(0.01, 0.05),
        sway=(0.2, 0.8),
        mag_noise=(3.0, 9.0),
        mag_drift=(5.0, 25.0),
        bump=(0.8, 2.2),
    ),
}
# Nominal gravity direction (phone frame) and how much it varies between windows.
_GRAVITY: dict[str, tuple[tuple[float, float, float], float]] = {
    "Still": ((0.0, 0.0, 1.0), 0.5),  # mostly flat on a table, sometimes not
    "Walking": ((0.0, 1.0, 0.2), 0.4),  # upright in a pocket
    "Running": ((0.0, 1.0, 0.2), 0.4),
    "Biking": ((0.2, 0.8, 0.5), 0.5),
    "Car": ((0.0, 0.5, 0.8), 0.6),  # holder, seat or hand
    "Bus": ((0.0, 0.6, 0.7), 0.6),
    "Train": ((0.0, 0.6, 0.7), 0.6),
    "Subway": ((0.0, 0.6, 0.7), 0.6),
}


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True).clip(1e-9)


def _draw(rng: np.random.Generator, bounds: tuple[float, float], m: int) -> np.ndarray:
    return rng.uniform(bounds[0], bounds[1], size=(m, 1))


def _class_windows(label: str, m: int, rng: np.random.Generator) -> np.ndarray:
    p = _PARAMS[label]
    t = np.arange(WINDOW, dtype=np.float64)[None, :] / RATE_HZ  # (1, W)
    out = np.empty((m, WINDOW, CHANNELS), dtype=np.float64)

    # Accelerometer: gravity + periodic motion along a random axis + sway + bumps + noise.
    mean_dir, spread = _GRAVITY[label]
    grav = _unit(np.asarray(mean_dir)[None, :] + rng.normal(0.0, spread, size=(m, 3)))
    freq = _draw(rng, p["freq"], m)
    phase = rng.uniform(0, 2 * np.pi, size=(m, 1))
    amp = _draw(rng, p["acc"], m)
    motion_axis = _unit(rng.normal(size=(m, 3)) + 1.5 * grav)  # mostly vertical
    wave = np.sin(2 * np.pi * freq * t + phase) + 0.35 * np.sin(4 * np.pi * freq * t + 2 * phase)
    sway_f = rng.uniform(0.15, 0.6, size=(m, 1))
    sway = _draw(rng, p["sway"], m) * np.sin(
        2 * np.pi * sway_f * t + rng.uniform(0, 2 * np.pi, size=(m, 1))
    )
    sway_axis = _unit(rng.normal(size=(m, 3)))
    bump_rate = _draw(rng, p["bump"], m)
    bumps = np.zeros((m, WINDOW))
    has_bump = bump_rate[:, 0] > 0
    if has_bump.any():
        # Short decaying jolts at a regular rate (rail joints).
        cyc = (t * bump_rate + rng.uniform(0, 1, size=(m, 1))) % 1.0
        bumps = np.where(has_bump[:, None], np.exp(-cyc * 12.0), 0.0)
        bumps *= rng.uniform(0.3, 1.0, size=(m, 1))
    noise = _draw(rng, p["noise"], m)
    acc = (
        _G * grav[:, None, :]
        + (amp * wave)[:, :, None] * motion_axis[:, None, :]
        + sway[:, :, None] * sway_axis[:, None, :]
        + bumps[:, :, None] * grav[:, None, :]
        + noise[:, :, None] * rng.normal(size=(m, WINDOW, 3))
    )

    # Gyroscope: rotation in step with the motion, a slow turn, noise.
    gyro_amp = _draw(rng, p["gyro"], m)
    gyro_axis = _unit(rng.normal(size=(m, 3)))
    turn = rng.normal(0.0, 0.05, size=(m, 1, 3))
    gyro = (
        (gyro_amp * np.sin(2 * np.pi * freq * t + phase + 0.7))[:, :, None] * gyro_axis[:, None, :]
        + turn
        + _draw(rng, p["gyro_noise"], m)[:, :, None] * rng.normal(size=(m, WINDOW, 3))
    )

    # Magnetometer: Earth's field in a random phone orientation, modulated by the
    # rotation, plus drift and disturbance (strong near electric traction).
    field_dir = _unit(rng.normal(size=(m, 3)))
    strength = rng.uniform(0.85, 1.15, size=(m, 1, 1)) * _EARTH_FIELD_UT
    wobble = (0.15 * gyro_amp * np.sin(2 * np.pi * freq * t + phase))[:, :, None]
    drift_dir = _unit(rng.normal(size=(m, 3)))
    drift = (_draw(rng, p["mag_drift"], m) * (t / t.max() - 0.5))[:, :, None] * drift_dir[
        :, None, :
    ]
    mag_noise = _draw(rng, p["mag_noise"], m)
    # Disturbances are low-pass (a smoothed random walk), not white noise.
    walk = np.cumsum(rng.normal(size=(m, WINDOW, 3)), axis=1) / np.sqrt(WINDOW)
    mag = (
        strength * field_dir[:, None, :] * (1.0 + wobble)
        + drift
        + mag_noise[:, :, None] * (0.6 * walk + 0.4 * rng.normal(size=(m, WINDOW, 3)))
    )

    out[:, :, 0:3] = acc
    out[:, :, 3:6] = gyro
    out[:, :, 6:9] = mag
    # Per-device sensor gain.
    out *= rng.uniform(0.93, 1.07, size=(m, 1, CHANNELS))
    return out


def make_windows(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` labelled windows: X float32 (n, 50, 9), y int64 (n,), deterministic per seed.

    Classes are balanced (``n // 8`` each, the remainder spread over the first
    classes) and shuffled.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    y = np.arange(n, dtype=np.int64) % len(CLASS_LABELS)
    rng.shuffle(y)
    X = np.empty((n, WINDOW, CHANNELS), dtype=np.float32)
    for k, label in enumerate(CLASS_LABELS):
        idx = np.flatnonzero(y == k)
        if idx.size:
            X[idx] = _class_windows(label, idx.size, rng)
    return X, y


def sample_window(seed: int = 0) -> list[list[float]]:
    """One window as nested lists (50 rows of 9 floats), ready for a JSON request body."""
    X, _ = make_windows(1, seed)
    return [[round(float(v), 5) for v in row] for row in X[0]]
