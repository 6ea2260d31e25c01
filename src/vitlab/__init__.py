"""vitlab: vision transformers, reference-exact, behind one API."""

from vitlab.errors import VitlabError
from vitlab.factory import create_model, load_checkpoint, save_checkpoint
from vitlab.registry import list_models, register_model

__version__ = "0.1.0"
__all__ = ["VitlabError", "create_model", "list_models", "load_checkpoint", "register_model", "save_checkpoint"]
