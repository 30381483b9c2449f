"""A batch's x as a model of several inputs takes it: a tuple's tensors are the model's positional arguments,
sliced, moved and measured together."""

import torch
import torch.nn.functional as F
from torch import nn

from esper.tolaria.inputs import examples_in, moved, positional, rows
from esper.tolaria.ranks import shard
from esper.tolaria.telemetry import sharpness
from esper.tolaria.userdata import UserData


class Sum(nn.Module):
    """Two inputs, one layer: its loss surface is the one-input model's on the inputs added."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)

    def forward(self, a, b):
        return self.linear(torch.tanh(a + b))


def test_a_tuple_or_list_is_the_models_arguments_and_a_tensor_its_only_one():
    a, b = torch.ones(2, 3), torch.zeros(2, 3)
    assert positional((a, b)) == (a, b)
    assert positional([a, b]) == (a, b)  # as a DataLoader collates a dataset's (a, b)
    assert positional(a)[0] is a and len(positional(a)) == 1


def test_rows_and_shards_slice_every_input_alike():
    a, b, y = torch.arange(10), torch.arange(10, 20), torch.arange(20, 30)
    assert [t.tolist() for t in rows((a, b), 2, 4)] == [[2, 3], [12, 13]]
    assert [t.tolist() for t in rows([a, b], 2, 4)] == [[2, 3], [12, 13]]
    (xa, xb), ys, count, weight = shard((a, b), y, 1, 3)
    assert (xa.tolist(), xb.tolist(), ys.tolist(), count) == ([4, 5, 6], [14, 15, 16], [24, 25, 26], 3)
    assert weight == 0.3


def test_moving_moves_each_tensor_and_leaves_the_rest():
    a = torch.ones(2)
    x = moved((a, "mask", 3), torch.device("meta"))
    assert x[0].device.type == "meta" and x[1:] == ("mask", 3)
    assert moved(a, None) is a


def test_examples_of_user_batches_of_two_inputs_keep_both():
    g = torch.Generator().manual_seed(0)
    batch = ((torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)), torch.arange(8) % 3)
    (a, b), y = UserData([batch], [batch], None, F.cross_entropy).examples(5)
    assert (a.shape, b.shape, y.tolist()) == ((5, 3), (5, 3), [0, 1, 2, 0, 1])


def test_sharpness_of_a_two_input_model_is_that_of_its_inputs_added():
    torch.manual_seed(0)
    model = Sum()
    a, b, y = torch.randn(16, 3), torch.randn(16, 3), torch.randint(0, 3, (16,))
    added = nn.Sequential(nn.Tanh(), model.linear)
    expected = sharpness(added, a + b, y, seed=1)
    assert abs(sharpness(model, (a, b), y, seed=1) - expected) <= 1e-4 * abs(expected)


def test_targets_of_several_tensors_are_counted_sliced_and_sharded_by_their_rows():
    x, y = torch.arange(10), (torch.arange(10, 20), torch.arange(20, 30).float())
    assert examples_in(y) == 10 and examples_in(x) == 10
    _, (ya, yb), count, weight = shard(x, y, 2, 3)
    assert (ya.tolist(), yb.tolist(), count, weight) == ([17, 18, 19], [27.0, 28.0, 29.0], 3, 0.3)
    _, (ya, yb) = UserData([(x, y)], [(x, y)], None, F.mse_loss).examples(2)
    assert (ya.tolist(), yb.tolist()) == ([10, 11], [20.0, 21.0])
