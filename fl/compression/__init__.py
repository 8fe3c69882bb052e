"""Communication compression: what a client sends up and what the server sends back."""
