"""Datasets as tensors, partitioners, and the federation of client index sets."""
