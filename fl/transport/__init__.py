"""Aggregation transports: all-reduce, gather, secure sum."""
