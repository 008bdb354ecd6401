"""Similarity kernels (installed as ``knowledge.kernels``)."""
