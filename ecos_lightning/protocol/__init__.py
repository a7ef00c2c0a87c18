"""The ECOS protocol: cloud probe (centroids down), client response (noisy coverage up), cloud sampling.

    cloud = CloudSampler(num_clusters=K, seed=0)
    down = cloud.fit(open_features)                      # CentroidsMessage
    up = ClientResponder(noise_multiplier=8.0).respond(CentroidsMessage.from_bytes(down.to_bytes()), client_features)
    indices = cloud.sample(ScoresMessage.from_bytes(up.to_bytes()), budget=1000)
"""

from .client import ClientResponder
from .cloud import CloudSampler, Selection
from .container import MessageError
from .encoder_spec import EncoderSpec
from .messages import CentroidsMessage, ScoresMessage
from .privacy import composed_epsilon, gaussian_epsilon, noise_multiplier_for_epsilon

__all__ = [
    "CentroidsMessage",
    "ClientResponder",
    "EncoderSpec",
    "CloudSampler",
    "MessageError",
    "ScoresMessage",
    "Selection",
    "composed_epsilon",
    "gaussian_epsilon",
    "noise_multiplier_for_epsilon",
]
