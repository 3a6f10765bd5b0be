"""The ``sales`` demo family: a daily store sales forecast from tabular features (regression)."""

__all__: list[str] = []
