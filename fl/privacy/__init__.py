"""Differential privacy: DP-FedAvg, DP-SGD inside clients, accounting."""
