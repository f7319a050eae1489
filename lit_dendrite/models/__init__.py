"""LightningModules (classifier for sessions II/III, inner-net pretraining for session I) and the protocol."""

from lit_dendrite.models.classifier import Classifier, Diverged
from lit_dendrite.models.loading import build_net, load_net, load_result
from lit_dendrite.models.pretrain import InnerPretrain, smooth_random_function
from lit_dendrite.models.protocol import Protocol, RunProtocol

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
