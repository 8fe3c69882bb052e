"""Asynchronous federated learning (FedBuff, FedAsync) on simulated client speeds.

* :mod:`~fl.asynchronous.staleness`: the staleness weights (pure);
* :mod:`~fl.asynchronous.schedule`: the whole event schedule of a run, computed up front from
  (seed, config) alone, identically on every rank (pure);
* :mod:`~fl.asynchronous.settings`: the ``scheduler`` config group, checked before any work.

The round loop (:mod:`fl.engine.loop`) runs one server step of the schedule where a synchronous
run runs one round: the step's clients train on the ranks, each from the model version it
downloaded, and their staleness-weighted updates pass through the same update pipeline,
transports and server step as a synchronous round's.
"""
