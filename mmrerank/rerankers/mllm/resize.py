"""Moved to `mmrerank.core.resize` (the retrieval layer's VLM embedders resize images the same way and may import
only downward); kept here so that existing imports keep working."""

from mmrerank.core.resize import MAX_RATIO, MAX_TOKENS, MIN_TOKENS, VisionResize, smart_resize, to_rgb

__all__ = ["MAX_RATIO", "MAX_TOKENS", "MIN_TOKENS", "VisionResize", "smart_resize", "to_rgb"]
