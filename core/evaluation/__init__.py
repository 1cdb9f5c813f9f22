"""Evaluation of a CLIP model: zero-shot classification and image<->text retrieval."""
