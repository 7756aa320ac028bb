"""String ids cross ranks as UTF-8 bytes plus lengths (no pickle): the encoding round-trips exactly."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from deltastore.distributed import decode_strings, encode_strings, unwrap_optimizer

ids = st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20), max_size=30)


@given(st.lists(ids, min_size=1, max_size=4))
def test_string_ids_round_trip_per_rank_and_concatenated(per_rank):
    decoded = []
    for values in per_rank:
        lengths, data = encode_strings(values)
        assert lengths.dtype.is_floating_point is False and data.dtype.itemsize == 1
        decoded += decode_strings(lengths, data)
    assert decoded == [s for values in per_rank for s in values]


def test_unwrap_optimizer_refuses_what_holds_no_optimizer():
    import pytest
    import torch

    from deltastore.errors import InvalidArgumentError

    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)

    class Wrapper:
        def __init__(self, inner):
            self.optimizer = inner

    assert unwrap_optimizer(Wrapper(Wrapper(opt))) is opt
    with pytest.raises(InvalidArgumentError, match="expected a torch.optim.Optimizer or a wrapper"):
        unwrap_optimizer(object())
