"""Which encoders a client agrees to run for the cloud.

A centroids or queries message names the encoder the cloud used (an :class:`EncoderSpec`). The client
never runs what a message names just because it names it: the spec is accepted only when

- its model is one the client allows: by default the allow-list :data:`ALLOWED_ENCODERS` (models
  with weights that ship offline), or exactly the client's own ``--encoder``;
- its input size is at most the client's bound (default :data:`DEFAULT_MAX_INPUT_SIZE` pixels);
- its weights agree with the client's: a keyword (``offline``, ``none``, ``hub``) must equal the
  weights the client loads for that model; a file path in a message names a file on the cloud's
  disk and is accepted only when the client named its own weights file, which is what it loads.
  Weights never come from a path the cloud chose;
- the feature dimension the message carries equals the dimension of that encoder, computed on the
  meta device before any weights are loaded or any image is read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..encoders import encoder_feature_dim
from ..protocol.encoder_spec import WEIGHT_KEYWORDS, EncoderSpec

#: timm model -> the weights a client loads for it, when the client names no encoder of its own.
ALLOWED_ENCODERS: Mapping[str, str] = {"efficientnet_lite0": "offline"}
#: Largest input side (pixels) a client runs by default: the feature memory grows with its square.
DEFAULT_MAX_INPUT_SIZE = 384


@dataclass(frozen=True)
class EncoderPolicy:
    """The client's rules for the encoder a message asks for.

    allowed: timm model name -> the weights the client loads for it (``offline``, ``none``, ``hub``
        or a path on the client's disk).
    max_input_size: the largest input side, in pixels, the client runs.
    """

    allowed: Mapping[str, str] = field(default_factory=lambda: dict(ALLOWED_ENCODERS))
    max_input_size: int = DEFAULT_MAX_INPUT_SIZE

    @classmethod
    def for_client(cls, encoder: str | None = None, weights: str | None = None,
                   max_input_size: int = DEFAULT_MAX_INPUT_SIZE) -> "EncoderPolicy":
        """The allow-list, or only ``encoder`` with ``weights`` (default: its allow-listed weights)."""
        if encoder is None:
            if weights is not None:
                raise ValueError("--encoder-weights needs --encoder: name the model those weights are for")
            return cls(max_input_size=max_input_size)
        weights = weights or ALLOWED_ENCODERS.get(encoder)
        if weights is None:
            raise ValueError(f"--encoder {encoder} has no offline weights known to this client: pass "
                             "--encoder-weights (a weights file on this machine, or none)")
        return cls({encoder: weights}, max_input_size)

    def accept(self, encoder: dict | None, feature_dim: int, source: str) -> EncoderSpec:
        """The spec to build for a message's ``encoder`` with ``feature_dim``-long features, or ``ValueError``.

        The returned spec carries the client's own weights. Nothing is built and no weights are read.
        """
        if encoder is None:
            raise ValueError(f"{source} names no encoder: the cloud must send its encoder spec")
        spec = EncoderSpec.from_dict(encoder)
        if spec.name not in self.allowed:
            raise ValueError(f"{source} asks for encoder {spec.name!r}, which this client does not run (allowed: "
                             f"{', '.join(sorted(self.allowed))}); to allow it, pass --encoder {spec.name} "
                             "with --encoder-weights")
        if spec.input_size > self.max_input_size:
            raise ValueError(f"{source} asks for input size {spec.input_size} px > this client's limit of "
                             f"{self.max_input_size}; raise --max-input-size to allow it")
        weights = self.allowed[spec.name]
        both_files = spec.weights not in WEIGHT_KEYWORDS and weights not in WEIGHT_KEYWORDS
        if spec.weights != weights and not both_files:
            raise ValueError(f"{source} asks for {spec.name} with weights {spec.weights!r:.80}, but this client "
                             f"loads {weights!r:.80} for it; features of other weights are not comparable")
        spec = replace(spec, weights=weights)
        dim = encoder_feature_dim(spec)
        if dim != feature_dim:
            raise ValueError(f"{source} carries {feature_dim}-dimensional features, but {spec.name} with "
                             f"{spec.pooling} pooling at {spec.input_size} px gives {dim}: the message is not "
                             "consistent with the encoder it names")
        return spec
