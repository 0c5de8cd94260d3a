"""Representational similarity: ``capture`` (layer taps), ``cka`` (the estimator), ``engine`` (k models
in one streaming pass), ``results``, ``blocks`` (block-structure detection) and ``plots``."""
