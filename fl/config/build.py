"""Build a run's components from the validated config.

Runtime objects (device, the communicator) come in as arguments. Collective steps here
(download on one rank then barrier; agreeing on per-site class names) go through
:class:`~fl.runtime.comm.Comm`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial
from typing import Callable

import torch
from omegaconf import DictConfig, OmegaConf

from fl.attacks import Adversary, NoAttack, malicious_clients
from fl.training.cohort import home_rank
from fl.runtime.comm import Comm
from fl.compression.codecs import Codec, NoCompression, Quantize
from fl.config.components import instantiate_component, locate
from fl.data import component, datasets, folder, tabular
from fl.data.augment import Augment
from fl.data.partition import holdout_split
from fl.data.datasets import DatasetSpec, TensorData
from fl.data.federation import (ClientShard, partition_indices, simulated_clients, site_client, summary,
                                with_label_groups)
from fl.config.validate import option_name, partition_name
from fl.errors import ConfigError
from fl.privacy.dp_sgd import LocalDP
from fl.privacy.dp_fedavg import DPFedAvg
from fl.privacy.settings import ClientLevelDP, NoPrivacy
from fl.secagg.settings import Masking, NoSecureAggregation
from fl.training.flat import FlatModel
from fl.models import build_model, check_model_config, model_name
from fl.training.objective import CLASSIFICATION, REGRESSION, check_loss
from fl.runtime.seeding import derive_seed
from fl.strategies.base import Strategy
from fl.runtime.env import resolve_backend, resolve_device
from fl.types import OptimizerFactory, StrategyContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Federation:
    """The data side of a run, as seen by one rank.

    ``shards`` holds every client in simulation, and only this rank's sites when data is
    per site. ``test`` is the centralized test set (``None`` for sites without a test root).
    """

    spec: DatasetSpec
    shards: dict[int, ClientShard]
    test: TensorData | None
    per_site: bool
    summary: dict

    def num_train(self, client_id: int) -> int:
        """Any client's training-set size, also one hosted by another rank (from the summary)."""
        return int(self.summary["clients"][str(client_id)]["num_train"])


def build_federation(cfg: DictConfig, comm: Comm, device: torch.device) -> Federation:
    d = cfg.data
    target = device if d.get("on_device", True) else torch.device("cpu")
    if d.get("name") == "folder":
        return _build_sites(cfg, comm, target)
    if d.get("name") == "csv":
        return _build_tables(cfg, comm, target)
    # the bundled datasets, the user's own data, or any torchvision class (fl.data.component)
    loaded = component.load(d, datasets.LoadContext(int(cfg.seed), comm))
    train, test, spec = loaded.train, loaded.test, loaded.spec
    check_task(cfg, spec.task, build_partitioner(cfg), build_attack(cfg))
    parts = partition_indices(train.y, cfg.fl.num_clients, build_partitioner(cfg), cfg.seed,
                              str(cfg.partition.get("_target_")))
    train, test = train.to(target), None if test is None else test.to(target)
    groups = int(cfg.partition.get("label_groups", 1))
    shards = simulated_clients(train, parts, cfg.fl.holdout_fraction, cfg.seed)
    shards = dict(enumerate(with_label_groups(shards, groups, spec.num_classes)))
    _check_client_sizes(cfg, shards, len(train))
    return Federation(spec, shards, test, False, summary(shards, spec.num_classes, groups))


def build_partitioner(cfg: DictConfig) -> Callable:
    """The ``partition`` group's partitioner, its arguments checked (contract: fl.data.partition).
    A class is constructed with the group's keys; a function gets them with each call."""
    import inspect

    node = OmegaConf.to_container(cfg.partition, resolve=True)
    assert isinstance(node, dict)
    if inspect.isroutine(locate("partition", node.get("_target_"))):
        node["_partial_"] = True
    partitioner = instantiate_component("partition", node, skip=("label_groups",))
    if not callable(partitioner):
        raise ConfigError("partition._target_", cfg.partition.get("_target_"), "must build a callable "
                          "partitioner(labels, num_clients, seed) -> list of index tensors")
    return partitioner


def check_task(cfg: DictConfig, task: str, partitioner: Callable, attack: NoAttack) -> None:
    """The loss and the components that read class labels must suit the data's task (fl.training.objective)."""
    check_loss(str(cfg.train.get("loss", "auto")), task)
    if task != REGRESSION:
        return
    label_based = [(key, value) for key, value, bad in (
        ("partition", partition_name(cfg.partition), getattr(partitioner, "uses_labels", True)
         and cfg.data.get("name") not in ("csv", "folder")),
        ("partition.label_groups", cfg.partition.get("label_groups", 1), cfg.partition.get("label_groups", 1) != 1),
        ("attack", option_name("attack", cfg.attack), attack.uses_labels and bool(attack.fraction)),
    ) if bad]
    if label_based:
        key, value = label_based[0]
        raise ConfigError(key, value, "works on class labels, but the data has a regression target "
                          "(data.task=regression); use partition=iid or another attack")


def _check_client_sizes(cfg: DictConfig, shards: dict[int, ClientShard], dataset_size: int | None) -> None:
    """Refuse a federation with a client below ``fl.min_client_samples`` training samples (e.g. far more
    clients than samples), naming the client, ``fl.num_clients`` and the dataset size."""
    need = int(cfg.fl.min_client_samples)
    small = [c for c, s in shards.items() if s.num_train < need]
    if not small:
        return
    c = small[0]
    if dataset_size is None:  # a site's own data
        raise ConfigError("data.root", str(cfg.data.root), f"client {c}'s site has {shards[c].num_train} training "
                          f"samples, fewer than fl.min_client_samples={need}")
    raise ConfigError("fl.num_clients", int(cfg.fl.num_clients),
                      f"leaves {len(small)} client(s) with fewer than fl.min_client_samples={need} training samples "
                      f"(client {c} has {shards[c].num_train}; the dataset has {dataset_size} training samples and "
                      f"fl.holdout_fraction={cfg.fl.holdout_fraction}); lower fl.num_clients or change the partition")


def _build_sites(cfg: DictConfig, comm: Comm, device: torch.device) -> Federation:
    d = cfg.data
    mine = [c for c in range(cfg.fl.num_clients) if home_rank(c, comm.world_size) == comm.rank]
    local_names = sorted({n for c in mine for n in folder.class_names(folder.site_path(str(d.root), c))})
    classes = sorted({n for names in comm.all_gather_object(local_names) for n in names})
    shape = (int(d.channels), int(d.image_size), int(d.image_size))
    shards = {}
    if d.get("stream", False):  # read lazily, batch by batch (fl.data.stream)
        def read(path):
            return folder.stream_folder(path, classes, shape[1], shape[0], int(d.workers), int(d.prefetch))
    else:
        def read(path):
            return folder.load_folder(path, classes, shape[1], shape[0]).to(device)
    for c in mine:
        shards[c] = site_client(read(folder.site_path(str(d.root), c)), cfg.fl.holdout_fraction, cfg.seed, c)
    _check_client_sizes(cfg, shards, None)
    test = None
    if d.test_root is not None:
        test = read(folder.Path(str(d.test_root)))
    spec = DatasetSpec(shape, len(classes))
    parts = comm.all_gather_object(summary(shards, spec.num_classes)["clients"])
    clients = {k: v for part in parts for k, v in part.items()}
    return Federation(spec, shards, test, True, {"num_clients": len(clients), "classes": classes,
                                                 "clients": dict(sorted(clients.items(), key=lambda kv: int(kv[0])))})


def _build_tables(cfg: DictConfig, comm: Comm, device: torch.device) -> Federation:
    """``data=csv``: each hosted site's table, encoded and scaled as the sites agreed (fl.data.tabular)."""
    d = cfg.data
    mine = [c for c in range(cfg.fl.num_clients) if home_rank(c, comm.world_size) == comm.rank]
    fraction = float(cfg.fl.holdout_fraction)

    def train_rows(cid: int, n: int) -> torch.Tensor:  # the same split as site_client makes below
        return holdout_split(torch.arange(n), fraction, derive_seed(cfg.seed, "holdout", cid))[0]

    features = None if d.features is None else [str(f) for f in d.features]
    regression = d.get("task", CLASSIFICATION) == REGRESSION
    tables, schema, sums = tabular.load_sites(comm, str(d.root), mine, str(d.target), features,
                                              [str(c) for c in d.categorical], train_rows, regression)
    shards = {c: site_client(tables[c].to(device), fraction, cfg.seed, c) for c in mine}
    _check_client_sizes(cfg, shards, None)
    test = None
    if d.test_root is not None:
        table = tabular.read_table(folder.Path(str(d.test_root)))
        encoded = tabular.encode(table, str(d.target), schema, key="data.test_root", regression=regression)
        test = TensorData(tabular.standardise(encoded.x, len(schema.numeric), sums), encoded.y).to(device)
    spec = DatasetSpec((schema.width,), 1, REGRESSION) if regression else DatasetSpec((schema.width,), len(schema.classes))
    parts = comm.all_gather_object(summary(shards, spec.num_classes)["clients"])
    clients = {k: v for part in parts for k, v in part.items()}
    return Federation(spec, shards, test, True, {
        "num_clients": len(clients), "classes": schema.classes, "numeric": schema.numeric,
        "categorical": schema.categorical, "clients": dict(sorted(clients.items(), key=lambda kv: int(kv[0])))})


def build_flat_model(cfg: DictConfig, spec: DatasetSpec, device: torch.device) -> FlatModel:
    """The model, initialised from the run seed (identical on every rank), on ``device``."""
    torch.manual_seed(derive_seed(cfg.seed, "init"))
    model = build_model(cfg.model, spec.input_shape, spec.num_classes).to(device)
    return FlatModel(model)


def build_optimizer_factory(cfg: DictConfig) -> OptimizerFactory:
    """``optim`` is a Hydra partial (``_target_`` + ``_partial_: true``); check it builds now."""
    if cfg.optim.get("_partial_") is not True:
        raise ConfigError("optim._partial_", cfg.optim.get("_partial_"), "must be true: the optimizer is built "
                          "per client from its parameters")
    factory = instantiate_component("optim", cfg.optim)
    if not isinstance(factory, partial):
        raise ConfigError("optim._target_", cfg.optim.get("_target_"), "must name an optimizer class")
    try:
        factory([torch.nn.Parameter(torch.zeros(1))])
    except (TypeError, ValueError) as e:
        raise ConfigError("optim", OmegaConf.to_container(cfg.optim), str(e)) from None
    # The probe above went through Hydra's partial, which checks the target and what it returns
    # on every call (about 0.4 ms). Serial training builds one optimizer per client per round,
    # so clients get a plain partial of the same, already checked, class and arguments.
    return partial(factory.func, *factory.args, **factory.keywords)


def build_augment(cfg: DictConfig, spec: DatasetSpec) -> Augment | None:
    """The data group's training-time augmentation (``data.augment``), or ``None``; images only."""
    a = cfg.data.get("augment")
    if a is None:
        return None
    aug = Augment(int(a.crop), bool(a.flip))
    if aug.active and len(spec.input_shape) != 3:
        raise ConfigError("data.augment", OmegaConf.to_container(a), f"crops and flips need images [C, H, W]; the "
                          f"data gives samples of shape {list(spec.input_shape)}: set data.augment.crop=0 "
                          "data.augment.flip=false")
    return aug if aug.active else None


def build_attack(cfg: DictConfig) -> NoAttack:
    """The ``attack`` group's attack, its keys checked (contract: fl.attacks.NoAttack)."""
    attack = instantiate_component("attack", cfg.attack)
    if not isinstance(attack, NoAttack):
        raise ConfigError("attack._target_", cfg.attack.get("_target_"), "must build a subclass of "
                          "fl.attacks.NoAttack (overriding labels() and/or delta())")
    return attack


def build_adversary(cfg: DictConfig, num_classes: int) -> Adversary:
    """The attack and its malicious clients, fixed by the seed."""
    attack = build_attack(cfg)
    malicious = malicious_clients(int(cfg.seed), int(cfg.fl.num_clients), float(attack.fraction))
    if not (attack.changes_data or attack.changes_updates):
        malicious = frozenset()
    return Adversary(attack, malicious, int(cfg.seed), num_classes)


def _warn_attack(cfg: DictConfig, attack: NoAttack) -> None:
    active = attack.changes_data or attack.changes_updates
    if not active and attack.fraction:
        log.warning("attack.fraction=%s has no effect with attack=none", attack.fraction)
    elif active and round(attack.fraction * int(cfg.fl.num_clients)) == 0:
        log.warning("attack=%s with attack.fraction=%s makes no client of %d malicious", option_name("attack", cfg.attack),
                    attack.fraction, int(cfg.fl.num_clients))


def build_privacy_settings(cfg: DictConfig) -> NoPrivacy | ClientLevelDP | LocalDP:
    """The ``privacy`` group's settings, checked when built (fl.privacy.settings); delta resolved."""
    settings = instantiate_component("privacy", cfg.privacy)
    if not isinstance(settings, (NoPrivacy, ClientLevelDP, LocalDP)):
        raise ConfigError("privacy._target_", cfg.privacy.get("_target_"), "must be one of "
                          "fl.privacy.settings.NoPrivacy, fl.privacy.settings.ClientLevelDP, fl.privacy.dp_sgd.LocalDP")
    if isinstance(settings, ClientLevelDP):
        settings = settings.resolved(int(cfg.fl.num_clients))
    return settings


def check_privacy(cfg: DictConfig, strategy: Strategy, transport: str) -> None:
    """The privacy checks that involve the strategy, the transport, the cohort and the rounds."""
    settings = build_privacy_settings(cfg)
    name = option_name("privacy", cfg.privacy)
    n, m = int(cfg.fl.num_clients), int(cfg.fl.clients_per_round)
    if isinstance(settings, LocalDP):
        build_local_dp(cfg, strategy)
        return
    if not isinstance(settings, ClientLevelDP):
        return
    if transport != "allreduce" or strategy.vector_dim(1) != 1:
        raise ConfigError("privacy", name, f"needs a strategy that averages model deltas on the all-reduce path "
                          f"(fedavg, fedprox, fedavgm, fedadam, ...), not {type(strategy).__name__}")
    z = float(settings.noise_multiplier)
    if settings.target_quantile is not None:
        count_noise = m / 20 if settings.count_noise is None else float(settings.count_noise)
        if z > 0 and not 2 * count_noise > z:
            raise ConfigError("privacy.count_noise", settings.count_noise,
                              f"adaptive clipping needs count_noise > noise_multiplier / 2 = {z / 2:g} (it is "
                              f"{count_noise:g}{' = clients_per_round / 20' if settings.count_noise is None else ''}); "
                              f"raise it, lower privacy.noise_multiplier, or set privacy.target_quantile=null")
    delta = float(settings.delta)  # type: ignore[arg-type]
    if delta >= 1 / n:
        log.warning("privacy.delta=%g is not below 1/num_clients=%g: a weak guarantee", delta, 1 / n)
    if settings.target_epsilon is not None:
        spent = settings.epsilon(n, m, int(cfg.fl.rounds))
        if spent > settings.target_epsilon:
            raise ConfigError("privacy.target_epsilon", settings.target_epsilon,
                              f"fl.rounds={cfg.fl.rounds} at noise_multiplier={settings.noise_multiplier} with "
                              f"{m} of {n} clients per round spends epsilon={spent:.3g} (delta={delta:.3g}); "
                              f"raise the noise or lower fl.rounds")


def build_privacy(cfg: DictConfig) -> DPFedAvg | None:
    """The DP-FedAvg state of a run (``privacy=dp_fedavg``), or ``None`` (checked by :func:`check_privacy`)."""
    p = build_privacy_settings(cfg)
    if not isinstance(p, ClientLevelDP):
        return None
    return DPFedAvg(float(p.clip_norm), float(p.noise_multiplier), int(cfg.fl.clients_per_round), int(cfg.seed),
                    None if p.target_quantile is None else float(p.target_quantile), float(p.clip_lr), p.count_noise)


def build_local_dp(cfg: DictConfig, strategy: Strategy) -> LocalDP | None:
    """DP-SGD settings for local training (``privacy=dp_sgd_local``), or ``None``; refuses strategies
    that add their own terms to local training (their gradients would escape the clipping)."""
    settings = build_privacy_settings(cfg)
    if not isinstance(settings, LocalDP):
        return None
    if strategy.changes_local_training:
        raise ConfigError("privacy", option_name("privacy", cfg.privacy), f"clips per-example gradients of the "
                          f"data loss, but {type(strategy).__name__} changes local training; use fedavg, fedavgm, "
                          f"fedadam, fedsgd, norm_bound or a robust aggregator")
    return settings


def check_trainable(cfg: DictConfig, model: torch.nn.Module) -> None:
    """DP-SGD needs per-example gradients of every layer (Opacus): BatchNorm, for one, has none."""
    from fl.privacy.dp_sgd import unsupported_layers

    if isinstance(build_privacy_settings(cfg), LocalDP) and (problems := unsupported_layers(model)):
        raise ConfigError("model", model_name(cfg.model), f"privacy=dp_sgd_local cannot train it: {problems[0]}")


def build_secagg(cfg: DictConfig) -> NoSecureAggregation | Masking:
    """The ``secagg`` group's settings, checked when built (fl.secagg.settings)."""
    settings = instantiate_component("secagg", cfg.secagg)
    if not isinstance(settings, (NoSecureAggregation, Masking)):
        raise ConfigError("secagg._target_", cfg.secagg.get("_target_"), "must be fl.secagg.settings.Masking or "
                          "fl.secagg.settings.NoSecureAggregation")
    return settings


def check_secagg(cfg: DictConfig, strategy: Strategy, transport: str) -> None:
    """Refuse secure aggregation with a strategy that needs individual updates."""
    settings = build_secagg(cfg)
    if isinstance(settings, NoSecureAggregation):
        return
    if transport != "allreduce":
        raise ConfigError("secagg", option_name("secagg", cfg.secagg), f"hides every individual update, but "
                          f"{type(strategy).__name__} (transport={transport}) needs them; use a strategy that "
                          f"averages (fedavg, fedprox, fedavgm, fedadam, scaffold, ...) or secagg=none")
    if settings.dropout == "fail" and (cfg.fl.dropout_rate > 0 or cfg.fl.round_deadline is not None):
        log.warning("secagg.dropout=fail with fl.dropout_rate=%s, fl.round_deadline=%s: every round in which a sampled "
                    "client sends nothing fails and leaves the model unchanged", cfg.fl.dropout_rate,
                    cfg.fl.round_deadline)


def build_codec(cfg: DictConfig, direction: str) -> Codec:
    """The ``compression/uplink`` or ``compression/downlink`` codec, checked when built."""
    key = f"compression.{direction}"
    node = OmegaConf.select(cfg, key)
    if node is None:
        return NoCompression(direction=direction)
    codec = instantiate_component(key, node, direction=direction)
    if not isinstance(codec, Codec):
        raise ConfigError(f"{key}._target_", node.get("_target_"), "must name a fl.compression.codecs.Codec")
    return codec


def check_compression(cfg: DictConfig, transport: str) -> None:
    """Compression checks that involve secure aggregation."""
    up = build_codec(cfg, "uplink")
    build_codec(cfg, "downlink")
    if isinstance(build_secagg(cfg), Masking) and not isinstance(up, (NoCompression, Quantize)):
        raise ConfigError("compression.uplink", option_name("compression/uplink", cfg.compression.uplink),
                          f"cannot be combined with secagg={option_name('secagg', cfg.secagg)}: secure aggregation "
                          f"adds masked integers, and {up.name} messages are not integers with a scale the cohort "
                          "shares; use compression/uplink=quantize (or none), or secagg=none")


def build_strategy(cfg: DictConfig) -> tuple[Strategy, str]:
    """The strategy object and the requested transport (``strategy.transport``)."""
    strategy = instantiate_component("strategy", cfg.strategy, skip=("transport",))
    if not isinstance(strategy, Strategy):
        raise ConfigError("strategy._target_", cfg.strategy.get("_target_"), "must name a fl.strategies.Strategy")
    return strategy, str(cfg.strategy.transport)


@dataclass(frozen=True)
class Job:
    """What a job needs before its process group exists: checked components and where to run."""

    strategy: Strategy
    transport: str
    make_optimizer: OptimizerFactory
    device: torch.device
    backend: str


def prepare(cfg: DictConfig, world_size: int, rank: int = 0, local_rank: int = 0) -> Job:
    """Validate ``cfg`` for this rank and build the cheap components; refuse impossible combinations.

    Raises :class:`ConfigError` before any work: no process group, no data, no files. The
    command line runs it for every point of a sweep before the first one trains.
    """
    from fl.transport.plain import choose_transport
    from fl.config.validate import validate
    from fl.asynchronous import settings as scheduler

    validate(cfg, world_size, rank)
    attack = build_attack(cfg)
    _warn_attack(cfg, attack)
    check_task(cfg, str(cfg.data.get("task", CLASSIFICATION)), build_partitioner(cfg), attack)
    check_model_config(cfg.model)
    device = resolve_device(cfg.runtime.device, local_rank)
    backend = resolve_backend(cfg.runtime.backend, device)
    strategy, requested = build_strategy(cfg)
    transport = choose_transport(requested, strategy)
    check_privacy(cfg, strategy, transport)  # the checks that involve two components
    check_secagg(cfg, strategy, transport)
    check_compression(cfg, transport)
    scheduler.check(cfg, strategy, isinstance(build_privacy_settings(cfg), LocalDP))
    make_optimizer = build_optimizer_factory(cfg)
    strategy.check(StrategyContext(int(cfg.fl.num_clients), int(cfg.fl.clients_per_round), make_optimizer,
                                   int(cfg.seed)))
    return Job(strategy, transport, make_optimizer, device, backend)
