"""The demo domain: human activity recognition from phone sensor windows."""

from models.activity.data import CHANNELS, CLASS_LABELS, WINDOW, make_windows, sample_window

__all__ = ["CHANNELS", "CLASS_LABELS", "WINDOW", "make_windows", "sample_window"]
