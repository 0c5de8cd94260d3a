"""Linear CKA with the unbiased HSIC estimator: a functional core and a streaming accumulator.

Functional core (pure functions of tensors):

- :func:`gram` -- linear Gram matrix of flattened, batch-centred features. Centring the features
  first changes no unbiased HSIC value (HSIC_1 ignores constant shifts) but removes the large
  common offset of post-ReLU activations, so a float32 product keeps ~1e-7 relative accuracy.
- :func:`u_center` -- the U-centring of a Gram matrix (Szekely & Rizzo 2014). With it,
  HSIC_1(K, L) of Song et al. (2012), the estimator of the paper's recipe, is an inner product:
  ``HSIC_1(K, L) = <U(K), U(L)> / (n (n - 3))``. Stacking the U-centred Grams of every layer as
  rows of one matrix turns all layer pairs into one matrix product.
- :func:`hsic1`, :func:`cka` -- one pair, one batch (the direct formula, used for checks).

Streaming accumulator (:class:`MinibatchCKA`, shaped like a torchmetrics metric:
``update``/``compute``/``reset``): per minibatch, the matrix of unbiased HSIC values between all
tapped layers (of all models) is added to a float64 running sum, weighted by the batch size,
and normalised only at the end:
``CKA_ij = S_ij / sqrt(S_ii S_jj)``, ``S = sum_b n_b HSIC_1(K_b^i, K_b^j)``.
Equal batches reduce exactly to the recipe's formula; a short final batch counts in proportion
to its examples. Per-batch matrices are kept (they are tiny) for a leave-one-batch-out
jackknife standard error of every CKA value. They are also what makes the estimator mergeable:
:meth:`MinibatchCKA.contribution` is one batch's matrix, :meth:`MinibatchCKA.add` takes one made
elsewhere (another process, another machine), and adding the same matrices in the same order gives
the same float64 sums, bit for bit (:mod:`hubcompare.similarity.distributed`).

On GPUs (:mod:`hubcompare.similarity.engine`'s accelerator pipeline): :func:`gram_dense` forms each
Gram in one float32 product, with TF32 off (TF32's 10-bit mantissa is far too coarse for the 1e-6 bound). The HSIC
products (``products``) are float64 where float64 is fast; elsewhere (consumer GPUs run float64 at
1/32-1/64 speed) they are float32 products over runs of a few Gram rows, each partial sum added
in float64: no sum of more than ``n * rows`` terms is ever kept in float32, which holds CKA within
~1e-7 of the all-float64 product (README, "Devices"). Sums over minibatches are always float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import CompareError
from ..models.devices import exact_float32

__all__ = ["flat_features", "gram", "gram_dense", "onednn_products", "u_center", "hsic1", "cka", "MinibatchCKA", "CKAEstimate",
           "MIN_BATCH", "HSIC_PRODUCTS"]

MIN_BATCH = 4  # the unbiased estimator divides by n (n - 3)


def _check_n(n: int) -> None:
    if n < MIN_BATCH:
        raise CompareError(f"the unbiased HSIC estimator needs at least {MIN_BATCH} examples per batch, got {n}: "
                           "use larger batches", params=("batch_size",))


GRAM_CHUNK_ELEMENTS = 1 << 18  # centred copy made per feature chunk: 1 MiB of float32, small enough to stay in cache
GRAM_CONVERTED_CHUNK_ELEMENTS = 1 << 19  # a float64 Gram's chunk buffer: 4 MiB (longer products, fewer of them)
GRAM_ROW_BLOCKS = 4  # the Gram is symmetric: only row blocks on and below the diagonal are multiplied
GRAM_MIN_BLOCK_ROWS = 64  # below this, smaller products cost more than the saved FLOPs
# gram(centred=False) keeps the raw product while ||X||^2 <= this x ||X_c||^2: float32 then loses at most
# ~this factor of relative accuracy to cancellation, and the CKA stays within ~3e-7 of float64
GRAM_MAX_OFFSET_RATIO = 4.0
DENSE_CHUNK_ELEMENTS = 1 << 26  # gram_dense centres a copy of at most this many features x examples at once (256 MiB)
HSIC_PRODUCTS = ("float64", "float32")
HSIC_PARTIALS_BYTES = 64 << 20  # float32 partial sums the "float32" products hold at once


def _row_blocks(n: int) -> list[tuple[int, int]]:
    b = max(1, min(GRAM_ROW_BLOCKS, n // GRAM_MIN_BLOCK_ROWS))
    edges = [round(i * n / b) for i in range(b + 1)]
    return list(zip(edges[:-1], edges[1:]))


_ONEDNN: list[bool] = []  # whether oneDNN's float32 matmul works here (checked once, on first use)


def onednn_products() -> bool:
    """Whether CPU Gram products go through oneDNN's float32 matmul (``mkldnn._linear_pointwise``, what torch's
    compiler uses for CPU linears) rather than BLAS: on AVX-512 CPUs it runs ~2x the float32 rate of the bundled
    MKL sgemm (MKL takes a slower path on AMD), in the same strict float32 (:func:`exact_float32` keeps oneDNN off
    bf16). It is an internal op, so it is checked once against the BLAS product and skipped if absent or off."""
    if not _ONEDNN:
        ok = False
        op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
        if op is not None and torch.backends.mkldnn.is_available():
            a = torch.linspace(-1.0, 1.0, 96 * 40).reshape(96, 40)
            try:
                with exact_float32():
                    got = op(a, a[:48], None, "none", [], "")
                ok = got.shape == (96, 48) and bool(torch.allclose(got, a @ a[:48].T, rtol=1e-5, atol=1e-5))
            except (RuntimeError, TypeError, NotImplementedError):
                ok = False
        _ONEDNN.append(ok)
    return _ONEDNN[0]


def _product(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a b^T in float32: oneDNN on the CPU where it works (:func:`onednn_products`), else BLAS."""
    if a.device.type == "cpu" and a.dtype == torch.float32 and onednn_products():
        with exact_float32():
            return torch.ops.mkldnn._linear_pointwise(a.contiguous(), b.contiguous(), None, "none", [], "")
    return a @ b.T


def _blocked_product(c: torch.Tensor, k: torch.Tensor, blocks: list[tuple[int, int]]) -> None:
    """k[lower row blocks] += c c^T, only the blocks on and below the diagonal."""
    for lo, hi in blocks:
        k[lo:hi, :hi] += _product(c[lo:hi], c[:hi])


def flat_features(x: torch.Tensor) -> torch.Tensor:
    """``x`` (n, ...) as (n, features), without a copy whenever memory holds each example's features as one run in
    some order (channels-last activations are (n, H, W, C) in memory). A Gram matrix is the same for every order of
    the features, so a layout is never forced back to NCHW: that copy would cost as much as the layer's Gram."""
    if x.dim() > 2 and not x.is_contiguous():
        y = x.permute(0, *sorted(range(1, x.dim()), key=lambda d: -x.stride(d)))
        if y.is_contiguous():
            return y.reshape(x.shape[0], -1)
    return x.reshape(x.shape[0], -1)


def gram(x: torch.Tensor, dtype: torch.dtype = torch.float32, centred: bool = True) -> torch.Tensor:
    """Linear Gram matrix (n, n) of ``x`` (n, ...) flattened per example, after centring the features.

    Centring is per feature, so it is done on feature chunks: the extra memory is one chunk, never
    a full copy of the activation. The Gram is symmetric, so with four row blocks only the ten
    blocks on and below the diagonal are multiplied (5/8 of the FLOPs of ``X @ X.T``) and the rest
    is mirrored: this product is most of what CKA adds to the forward passes. Features are read in
    memory order (:func:`flat_features`).

    ``centred=False`` is for unbiased HSIC only, which ignores constant feature shifts: the raw
    product (no centred copy) is returned when the features' common offset is small enough for
    float32 (``tr K / tr HKH <= GRAM_MAX_OFFSET_RATIO``), the centred Gram otherwise. PC analysis
    needs the centred Gram and keeps the default.
    """
    x = flat_features(x)
    n, p = x.shape
    blocks = _row_blocks(n)
    k = torch.zeros(n, n, dtype=dtype, device=x.device)
    if not centred:
        xd = x.to(dtype)
        # the first diagonal tile (the first rows' own Gram) shows a large offset early: then only
        # the centred product is computed, not the raw one as well (random-init models, raw ReLU maps)
        _blocked_product(xd, k, blocks[:1])
        if _offset_is_small(k[: blocks[0][1], : blocks[0][1]]):
            _blocked_product(xd, k, blocks[1:])
            _mirror(k, blocks)
            if _offset_is_small(k):
                return k
        k.zero_()
    step = max(1, GRAM_CHUNK_ELEMENTS // max(n, 1))
    if dtype == x.dtype:
        for j in range(0, p, step):
            c = x[:, j : j + step]
            _blocked_product(c - c.mean(0, keepdim=True), k, blocks)
    else:  # each chunk converted into one reused buffer (fresh copies cost more in page faults than the products)
        step = max(1, GRAM_CONVERTED_CHUNK_ELEMENTS // max(n, 1))
        buffer = torch.empty(n, min(step, p), dtype=dtype, device=x.device)
        for j in range(0, p, step):
            c = buffer[:, : min(step, p - j)]
            c.copy_(x[:, j : j + step])
            _blocked_product(c.sub_(c.mean(0, keepdim=True)), k, blocks)
    _mirror(k, blocks)
    return k


def gram_dense(x: torch.Tensor) -> torch.Tensor:
    """The centred Gram (n, n) in float32 as a GPU likes it: the features centred and multiplied in one
    product (a chunk of ``DENSE_CHUNK_ELEMENTS`` at a time for huge activations), TF32 off, symmetrised;
    no value is read back to the host. Equal to :func:`gram` up to float32 rounding."""
    x = flat_features(x)
    n, p = x.shape
    step = max(1, DENSE_CHUNK_ELEMENTS // max(n, 1))
    k = None
    with exact_float32():
        for j in range(0, p, step):
            c = x[:, j : j + step].to(torch.float32)
            c = c - c.mean(0, keepdim=True)
            k = c @ c.T if k is None else k.addmm_(c, c.T)
    return (k + k.T).mul_(0.5)


def _offset_is_small(k: torch.Tensor) -> bool:
    """tr K <= GRAM_MAX_OFFSET_RATIO * tr HKH for a raw Gram K (tr HKH = ||X_c||_F^2)."""
    trace = float(k.diagonal().sum(dtype=torch.float64))
    centred_trace = trace - float(k.sum(dtype=torch.float64)) / k.shape[0]
    return centred_trace > 0 and trace <= GRAM_MAX_OFFSET_RATIO * centred_trace


def _mirror(k: torch.Tensor, blocks: list[tuple[int, int]]) -> None:
    for lo, hi in blocks[1:]:
        k[:lo, lo:hi] = k[lo:hi, :lo].T


def u_center(k: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """U-centred copy of a Gram matrix (diagonal ignored and set to 0), in float64 (into ``out`` if given)."""
    n = k.shape[0]
    _check_n(n)
    u = k.to(torch.float64).clone() if out is None else out.copy_(k)
    u.fill_diagonal_(0.0)
    rows = u.sum(1, keepdim=True) / (n - 2)
    total = rows.sum() / (n - 1)  # = sum(K~) / ((n-1)(n-2))
    u.sub_(rows).sub_(rows.T).add_(total)  # K~ is symmetric: column sums equal row sums
    u.fill_diagonal_(0.0)
    return u


def hsic1(k: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Unbiased HSIC_1 of two Gram matrices, by the recipe's three-term formula (float64)."""
    n = k.shape[0]
    _check_n(n)
    k, l = k.to(torch.float64).clone(), l.to(torch.float64).clone()
    k.fill_diagonal_(0.0)
    l.fill_diagonal_(0.0)
    ones = torch.ones(n, dtype=torch.float64)
    kl = k @ l
    value = torch.trace(kl) + k.sum() * l.sum() / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (ones @ kl @ ones)
    return value / (n * (n - 3))


def cka(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Linear CKA of two activations (n, ...) on one batch, with the unbiased HSIC (float64)."""
    k, l = gram(x, torch.float64), gram(y, torch.float64)
    return hsic1(k, l) / torch.sqrt(hsic1(k, k) * hsic1(l, l))


@dataclass
class CKAEstimate:
    """CKA between every pair of accumulated layers: ``value`` and jackknife ``se`` (L, L).

    ``undefined`` lists indices of layers whose summed self-HSIC is not positive (constant on all
    examples): their rows and columns are NaN, never silently clamped.
    """

    value: torch.Tensor
    se: torch.Tensor
    hsic: torch.Tensor
    num_batches: int
    num_examples: int
    undefined: list[int]


class MinibatchCKA:
    """Streaming all-pairs minibatch CKA over ``num_layers`` layers (of one or several models)."""

    def __init__(self, num_layers: int, keep_batches: bool = True, products: str = "float64"):
        """``products``: how each minibatch's HSIC matrix is formed (:meth:`batch_hsic`); sums are float64 either way."""
        if products not in HSIC_PRODUCTS:
            raise CompareError(f"HSIC products must be one of {HSIC_PRODUCTS}, not {products!r}")
        self.num_layers = num_layers
        self.keep_batches = keep_batches
        self.products = products
        self.reset()

    def reset(self) -> None:
        self.total = torch.zeros(self.num_layers, self.num_layers, dtype=torch.float64)
        self.batches: list[torch.Tensor] = []
        self.num_batches = 0
        self.num_examples = 0

    @staticmethod
    def batch_hsic(u_grams: torch.Tensor, products: str = "float64") -> torch.Tensor:
        """All-pairs HSIC_1 (L, L), float64, from stacked U-centred Grams (L, n, n) float64.

        ``products="float64"``: one float64 matrix product. ``"float32"`` (for GPUs with slow float64): the
        Grams' rows are cut into runs of a few rows, each run's (L, L) products are float32 (TF32 off) and
        the runs' partial sums are added in float64.
        """
        layers, n = u_grams.shape[0], u_grams.shape[-1]
        if products == "float64":
            flat = u_grams.reshape(layers, -1)
            return (flat @ flat.T) / (n * (n - 3))
        rows = max(1, math.ceil(n * layers * layers * 4 / HSIC_PARTIALS_BYTES))  # partial sums within the budget
        runs = math.ceil(n / rows)
        u = u_grams.to(torch.float32)
        if runs * rows != n:  # zero rows add nothing
            u = F.pad(u, (0, 0, 0, runs * rows - n))
        parts = u.reshape(layers, runs, rows * n).transpose(0, 1)  # (runs, L, rows * n)
        with exact_float32():
            partial = torch.bmm(parts, parts.transpose(1, 2))
        return partial.to(torch.float64).sum(0) / (n * (n - 3))

    @classmethod
    def contribution(cls, u_grams: torch.Tensor, products: str = "float64") -> torch.Tensor:
        """What one minibatch adds to the sums: ``n * HSIC_1`` (L, L) float64, from its stacked U-centred Grams."""
        n = u_grams.shape[-1]
        _check_n(n)
        return cls.batch_hsic(u_grams, products) * n

    def update(self, u_grams: torch.Tensor) -> None:
        """Add one minibatch: ``u_grams`` (L, n, n) float64, the U-centred Grams of every layer."""
        if u_grams.shape[0] != self.num_layers:
            raise CompareError(f"expected {self.num_layers} Gram matrices (one per layer this accumulator was made for), "
                               f"got {u_grams.shape[0]}")
        self.add(self.contribution(u_grams, self.products), u_grams.shape[-1])

    def add(self, h: torch.Tensor, n: int) -> None:
        """Add one minibatch's :meth:`contribution` ``h`` (L, L) of ``n`` examples, made here or in another process.

        Minibatches added in the same order give the same float64 sums and jackknife, bit for bit."""
        if tuple(h.shape) != (self.num_layers, self.num_layers) or h.dtype != torch.float64:
            raise CompareError(f"a minibatch contribution must be a ({self.num_layers}, {self.num_layers}) float64 matrix, "
                               f"got {tuple(h.shape)} {h.dtype}")
        _check_n(n)
        if self.total.device != h.device:  # sums stay where the Grams are (no transfer per batch)
            self.total = self.total.to(h.device)
        self.total += h
        if self.keep_batches:
            self.batches.append(h)
        self.num_batches += 1
        self.num_examples += n

    @staticmethod
    def normalise(s: torch.Tensor) -> torch.Tensor:
        d = torch.diagonal(s, dim1=-2, dim2=-1)
        good = d > 0
        scale = torch.where(good, d, torch.ones_like(d)).sqrt()
        out = s / (scale.unsqueeze(-1) * scale.unsqueeze(-2))
        bad = ~good
        return out.masked_fill(bad.unsqueeze(-1) | bad.unsqueeze(-2), float("nan"))

    def compute(self) -> CKAEstimate:
        if self.num_batches == 0:
            raise CompareError("no minibatch was accumulated: give the estimate at least one batch before asking for its value")
        total = self.total.cpu()
        value = self.normalise(total)
        se = torch.full_like(value, float("nan"))
        if self.keep_batches and self.num_batches >= 2:
            b = self.num_batches
            loo = self.normalise(total.unsqueeze(0) - torch.stack(self.batches).cpu())  # (B, L, L)
            se = ((b - 1) / b * ((loo - loo.mean(0)) ** 2).sum(0)).sqrt()
        undefined = [i for i in range(self.num_layers) if not total[i, i] > 0]
        return CKAEstimate(value, se, total.clone(), self.num_batches, self.num_examples, undefined)
