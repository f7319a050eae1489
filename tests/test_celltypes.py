"""The cell-type neuron: the unit-to-type rule, each type's inner net on its block, its fast paths, and the
celltypes nets under the protocol."""

import pytest
import torch

from lit_dendrite.nn.celltypes import CellTypeInnerNets, CellTypeNeuron, cell_type_blocks


def test_unit_u_of_n_has_type_floor_u_k_over_n():
    for units, types in [(64, 10), (7, 3), (3, 5), (10, 10), (1, 1)]:
        blocks = cell_type_blocks(units, types)
        assert len(blocks) == types and blocks[0][0] == 0 and blocks[-1][1] == units
        for k, (start, stop) in enumerate(blocks):
            assert [u * types // units for u in range(start, stop)] == [k] * (stop - start)
    assert cell_type_blocks(64, 10)[:3] == [(0, 7), (7, 13), (13, 20)]


def test_each_unit_goes_through_its_types_inner_net():
    torch.manual_seed(0)
    inners = CellTypeInnerNets(3, arity=2, hidden=(16, 16))
    neuron = CellTypeNeuron(inners)
    x = torch.randn(4, 7, 2)
    out = neuron(x)
    assert out.shape == (4, 7)
    for unit in range(7):
        inner = inners.types[unit * 3 // 7]
        torch.testing.assert_close(out[:, unit], inner(x[:, unit]))
    torch.testing.assert_close(neuron(x.movedim(-1, 0), dim=0), out)  # units: the output's last dim either way


def test_fused_path_equals_plain_path_per_type():
    torch.manual_seed(0)
    inners = CellTypeInnerNets(4, arity=2, hidden=(64, 64))
    neuron = CellTypeNeuron(inners)
    z = torch.randn(50, 6, 6, 2 * 12, requires_grad=True)  # conv-like (N, H, W, C) maps: 12 units, 3 per type
    results = {}
    for impl in ("plain", "fused"):
        for inner in inners.types:
            inner.impl = impl
        inners.zero_grad()
        z.grad = None
        out = neuron.normalized(z, 3, pool=2)
        out.square().sum().backward()
        results[impl] = (out, z.grad, [p.grad.clone() for p in inners.parameters()])
    (out_plain, z_plain, p_plain), (out_fused, z_fused, p_fused) = results["plain"], results["fused"]
    torch.testing.assert_close(out_fused, out_plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(z_fused, z_plain, atol=1e-5, rtol=1e-4)
    for fused, plain in zip(p_fused, p_plain):
        assert plain.abs().sum() > 0
        torch.testing.assert_close(fused, plain, atol=1e-4, rtol=1e-4)


def test_bad_number_of_types_is_a_clear_error():
    with pytest.raises(ValueError, match="positive integer"):
        CellTypeInnerNets(0)
