"""User-facing errors: raised before any work starts, printed as one line."""


class ConfigError(ValueError):
    """A configuration value is invalid.

    The message names the key, the value and what is allowed, e.g.
    ``fl.clients_per_round=20 is invalid: must be between 1 and fl.num_clients=10``.
    """

    def __init__(self, key: str, value: object, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"{key}={value!r} is invalid: {allowed}")
