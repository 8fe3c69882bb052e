"""Client training: local SGD, per-client state, cohorts, flat parameters, losses."""
