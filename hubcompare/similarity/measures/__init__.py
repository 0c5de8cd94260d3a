"""Similarity measures the engine computes in one streaming pass (:mod:`.base`: the protocol and registry).

Importing this package registers every measure below, in the order ``hubcompare measures`` lists them."""

from __future__ import annotations

from .base import (LayerInputs, Measure, MeasureEstimate, Param, make_measure, measure_class, measure_from_key, measure_info,
                   measure_names, parse_measures)
from .kernels import RBFCKA, LinearCKA
from .cca import PWCCA, SVCCA, LinearRegression
from .neighbours import MutualKNN
from .procrustes import Procrustes
from .rsa import RSA

__all__ = ["LayerInputs", "LinearCKA", "LinearRegression", "SVCCA", "Measure", "MeasureEstimate", "MutualKNN", "PWCCA", "Param", "Procrustes", "RBFCKA", "RSA",
           "make_measure", "measure_class", "measure_from_key", "measure_info", "measure_names", "parse_measures"]
