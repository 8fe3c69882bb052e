"""Secure aggregation maths: fixed point, keys, pairwise masks, secret sharing."""
