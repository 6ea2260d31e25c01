"""Pure tensor helpers."""
