"""vitlab: vision transformers, reference-exact, behind one API."""

from vitlab.errors import VitlabError
from vitlab.registry import create_model, list_models, register_model
from vitlab.weights import load_checkpoint, save_checkpoint

__version__ = "0.1.0"
__all__ = ["VitlabError", "create_model", "list_models", "load_checkpoint", "register_model", "save_checkpoint"]
