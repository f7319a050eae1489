"""LightningModules (classifier for sessions II/III, inner-net pretraining for session I) and the protocol."""

from lit_dendrite.models.classifier import Classifier, Diverged
from lit_dendrite.models.loading import build_net, load_net, load_result
from lit_dendrite.models.pretrain import InnerPretrain
from lit_dendrite.models.protocol import Protocol, RunProtocol
from lit_dendrite.nn.inner import smooth_random_function

__all__ = [
    "Classifier",
    "Diverged",
    "InnerPretrain",
    "Protocol",
    "RunProtocol",
    "build_net",
    "load_net",
    "load_result",
    "smooth_random_function",
]
