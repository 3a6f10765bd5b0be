"""Model registry (manifests, versions, sha256-checked artifacts) and the demo models."""

from models.register import register_user_model
from models.registry import Manifest, Registry

__all__ = ["Manifest", "Registry", "register_user_model"]
