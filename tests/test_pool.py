"""2x2 max-pooling by strided maxima: the values and gradients of ``F.max_pool2d(x, 2)``."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import grad, vmap

from fl.training.pool import MaxPool2x2, max_pool_2x2, replaceable


@pytest.mark.parametrize("shape,kind", [((4, 3, 24, 24), "normal"), ((2, 3, 9, 7), "normal"), ((3, 2, 8, 8), "ties"),
                                        ((2, 5, 6, 6), "all equal"), ((10, 12, 12), "normal")])
def test_values_and_gradients_equal_max_pool2d_ties_included(shape, kind):
    g = torch.Generator().manual_seed(3)
    x = {"normal": lambda: torch.randn(shape, generator=g),
         "ties": lambda: torch.randint(0, 2, shape, generator=g).float(),  # most windows hold a tie
         "all equal": lambda: torch.zeros(shape)}[kind]()
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref, got = F.max_pool2d(a, 2), max_pool_2x2(b)
    up = torch.randn(ref.shape, generator=g)
    ref.backward(up)
    got.backward(up)
    assert torch.equal(got, ref)
    assert torch.equal(b.grad, a.grad), "the gradient goes to the entry max_pool2d sends it to"


def test_under_vmap_of_grad_and_with_a_nan():
    w = torch.randn(5, 3, 10, 10, generator=torch.Generator().manual_seed(4))
    per_client = lambda pool: vmap(grad(lambda v: (pool(v) ** 2).sum()))(w)  # noqa: E731
    assert torch.equal(per_client(max_pool_2x2), per_client(lambda v: F.max_pool2d(v, 2)))
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 0, 1] = float("nan")
    assert max_pool_2x2(x)[0, 0, 0, 0].isnan() and F.max_pool2d(x, 2)[0, 0, 0, 0].isnan()


def test_only_plain_2x2_pooling_is_replaced():
    assert replaceable(nn.MaxPool2d(2)) and replaceable(nn.MaxPool2d((2, 2), stride=2))
    for other in (nn.MaxPool2d(3), nn.MaxPool2d(2, stride=1), nn.MaxPool2d(2, padding=1), nn.MaxPool2d(2, ceil_mode=True),
                  nn.MaxPool2d(2, dilation=2), nn.MaxPool2d(2, return_indices=True), nn.AvgPool2d(2)):
        assert not replaceable(other), other
    assert torch.equal(MaxPool2x2()(torch.arange(16.0).view(1, 1, 4, 4)), torch.tensor([[[[5.0, 7.0], [13.0, 15.0]]]]))


def test_batched_training_on_a_cpu_pools_with_it_and_leaves_the_model_alone():
    from fl.models import cnn_padded
    from fl.training.batched import SGD, BatchedTrainer
    from fl.training.flat import FlatModel

    fm = FlatModel(cnn_padded((1, 8, 8), 10))
    trainer = BatchedTrainer(fm, SGD(lr=0.1), "classification", (1, 8, 8), 64)
    kinds = [type(m) for m in trainer.module.modules()]
    assert MaxPool2x2 in kinds and nn.MaxPool2d not in kinds
    assert nn.MaxPool2d in [type(m) for m in fm.module.modules()], "the user's model keeps its own layers"
