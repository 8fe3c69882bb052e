"""Configuration: checks before any work, the schema, components by _target_, building a job."""
