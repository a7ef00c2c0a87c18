"""Frozen, pooled timm feature extractors with their own preprocessing (torch and timm).

* :mod:`.factory`: timm model creation, weight loading (offline, hub, none, a file) and
  :func:`spec_for_model` (a spec with timm's config for a model);
* :mod:`.preprocess`: images (tensors, arrays, PIL, dataset items) to normalised tensors;
* :mod:`.extract`: :class:`FeatureEncoder`, :func:`build_encoder` and :func:`extract_features`.

The spec they build from, :class:`~ecos_lightning.protocol.encoder_spec.EncoderSpec`, is plain data
in the protocol (no torch).
"""

from .extract import FeatureEncoder, build_encoder, encoder_feature_dim, extract_features
from .factory import (Encoder, create_timm_model, load_offline_efficientnet_lite0_state_dict, map_state_dict_by_position,
                      spec_for_model)
from .preprocess import item_image, resize_normalise, resize_square

__all__ = [
    "Encoder",
    "FeatureEncoder",
    "build_encoder",
    "create_timm_model",
    "encoder_feature_dim",
    "extract_features",
    "item_image",
    "load_offline_efficientnet_lite0_state_dict",
    "map_state_dict_by_position",
    "resize_normalise",
    "resize_square",
    "spec_for_model",
]
