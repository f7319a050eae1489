"""Plain-torch building blocks (neurons and their registry, dendritic layers, the paper's outer networks, a dendritic
ResNet-18), the fused inner net as a torch custom op (native CPU and Triton CUDA kernels) and the native kernel of the
frozen tables."""

from lit_dendrite.nn.acceleration import maybe_compile
from lit_dendrite.nn.celltypes import CellTypeInnerNets, CellTypeNeuron
from lit_dendrite.nn.inner import InnerNet
from lit_dendrite.nn.kan import KANConv2d, KANLinear
from lit_dendrite.nn.layers import DendriticConv2d, DendriticLinear
from lit_dendrite.nn.matching import count_parameters, match_width
from lit_dendrite.nn.nets import NETS, DendriticCNN, DendriticMLP, Normalize, OuterNet, register_net
from lit_dendrite.nn.neurons import (
    NEURONS,
    Neuron,
    NeuronSpec,
    SharedNeuron,
    build_neuron,
    neuron_spec,
    register_neuron,
)
from lit_dendrite.nn.pau import PadeActivation, PadeNeuron
from lit_dendrite.nn.resnet import DendriticResNet
from lit_dendrite.nn.tabulated import exact_inner, tabulate_inner, tabulation_report, use_exact_inner

__all__ = [
    "NETS",
    "NEURONS",
    "CellTypeInnerNets",
    "CellTypeNeuron",
    "DendriticCNN",
    "DendriticConv2d",
    "DendriticLinear",
    "DendriticMLP",
    "DendriticResNet",
    "InnerNet",
    "KANConv2d",
    "KANLinear",
    "Neuron",
    "NeuronSpec",
    "Normalize",
    "OuterNet",
    "PadeActivation",
    "PadeNeuron",
    "SharedNeuron",
    "build_neuron",
    "count_parameters",
    "exact_inner",
    "match_width",
    "maybe_compile",
    "neuron_spec",
    "register_net",
    "register_neuron",
    "tabulate_inner",
    "tabulation_report",
    "use_exact_inner",
]
