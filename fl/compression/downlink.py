"""The server side of compression: the model sent back to the clients.

The server keeps its exact model ``x`` (what strategies update, what is evaluated and saved).
Clients hold ``x_hat``, the model they actually received, and train from it. After each round
the server sends the compressed difference ``C(x - x_hat)`` and both sides set
``x_hat <- x_hat + decoded``. What a message leaves out stays in ``x - x_hat`` and goes out with
the next one: that is the server's error feedback, with no extra state beyond ``x_hat`` (saved in
the checkpoint, so a resumed run continues exactly).

Bytes: every client of a round receives the message that brings ``x_hat`` up to date (the first
round: the initial model, in float32). This assumes clients hear every broadcast, as silos do;
a stateless phone that joins late would need the whole model.
"""

from __future__ import annotations

import torch

from fl.compression.codecs import Codec, Key, NoCompression


class Downlink:
    def __init__(self, codec: Codec | None, seed: int) -> None:
        self.codec = codec or NoCompression()
        self.seed = int(seed)
        self.client_model: torch.Tensor | None = None
        self.message_bytes: int | None = None  # of the message that produced the current client model

    @property
    def active(self) -> bool:
        return not isinstance(self.codec, NoCompression)

    def received(self, global_flat: torch.Tensor) -> torch.Tensor:
        """The model the clients train from this round."""
        if not self.active:
            return global_flat
        if self.client_model is None:
            self.client_model = global_flat.detach().clone()
        return self.client_model

    def bytes_per_client(self, dim: int) -> int:
        return 4 * dim if self.message_bytes is None else self.message_bytes

    def send(self, round_idx: int, new_global: torch.Tensor) -> None:
        """After the server step: compress ``new_global - x_hat`` and apply it to ``x_hat``
        (identical on every rank: both models are)."""
        if not self.active:
            return
        held = self.received(new_global)
        key = Key(self.seed, round_idx, -1)
        x = self.codec.forward(new_global - held, key)
        scale = self.codec.local_scale(x, key) if self.codec.shared_scale else 0.0
        enc = self.codec.encode(x, key, scale)
        held += self.codec.backward(self.codec.decode(enc, key).to(held), len(held), key)
        self.message_bytes = enc.nbytes

    def state_dict(self) -> dict:
        return {"client_model": None if self.client_model is None else self.client_model.detach().cpu(),
                "message_bytes": self.message_bytes}

    def load_state_dict(self, state: dict | None, device: torch.device) -> None:
        if not state:
            return
        model = state.get("client_model")
        self.client_model = None if model is None else model.to(device)
        self.message_bytes = state.get("message_bytes")
