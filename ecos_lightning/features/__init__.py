"""Features of the images both parties encode:

* :mod:`.store`: chunked, resumable, memory-mapped float32 feature matrices on disk, their markers and
  digests (numpy + filelock; no torch);
* :mod:`.cache`: :func:`~.cache.cached_features`, extraction (torch, timm) into a store keyed by the
  encoder spec and the data's identity.
"""
