"""The HTTP adapter: route modules over one data plane, registered on one app."""

__all__ = []
