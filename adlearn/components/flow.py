"""Normalizing-flow building blocks: `AllInOneBlock`, `SequenceFlow` and subnet helpers
(reference: ``anomalib.models.components.flow.AllInOneBlock``, a copy of FrEIA's block).

Idea
----
A normalizing flow is an invertible network z = f(x) whose Jacobian determinant is cheap. By the
change-of-variables formula, with a standard normal prior on z,

    log p(x) = log N(z; 0, I) + log |det df/dx|          ("log_jac_det")

so training maximises the likelihood of normal data and, at test time, a low likelihood means an
anomaly (FastFlow, CFLOW, U-Flow).

`AllInOneBlock` is the "Glow-style" block of the FrEIA library, re-written here without FrEIA. One
block does, in order (x has C channels; any trailing spatial dims are treated per position):

1. (optional, ``reverse_permutation``) x <- W^T x: undo the permutation *before* the block
   (Putzky & Welling, 2019).
2. Affine coupling (Real-NVP, Dinh et al. 2017). Split the channels: x1 = first C1 = C - C//2
   channels, x2 = last C2 = C//2. A subnet sees x1 (and the conditions c) and predicts
   a = 0.1 * subnet(concat(x1, *c)) with 2*C2 channels; then

       s  = alpha * tanh(a[:, :C2])          soft-clamped log-scale (|s| < alpha, no blow-up)
       x2 <- x2 * exp(s) + a[:, C2:]         log-det contribution: sum of s

   x1 passes through unchanged, so the inverse is trivial: x2 = (x2' - t) * exp(-s).
   GIN (Sorrenson et al. 2019, ``gin_block=True``) subtracts the mean of s over all non-batch
   dims, making the block volume-preserving (log-det exactly 0).
3. Global affine ("ActNorm"-like) per channel: x <- Psi(gamma) * x + beta, log-det
   (positions per channel) * sum_c log Psi(gamma_c). Psi keeps the scale positive:
   SOFTPLUS 0.1*softplus(gamma, beta=0.5) (default), SIGMOID 10*sigmoid(gamma - 2), EXP exp(gamma);
   gamma starts so that Psi = ``global_affine_init`` and beta starts at 0. (Skipped for GIN,
   except the offset beta, which does not change the volume.)
4. Mix the channels with an orthogonal matrix W (|det W| = 1, so no log-det): a fixed random
   permutation, or with ``permute_soft`` a random rotation from SO(C). With
   ``learned_householder_permutation=K``, W = W0 * H_1 ... H_K with learned Householder
   reflections H_k = I - 2 v v^T / |v|^2 (v starts as 0.2 * randn). W acts as a 1x1 convolution:
   ``F.linear`` for (B, C), ``conv1d`` for (B, C, L), ``conv2d`` for (B, C, H, W), ``conv3d``.

So y = W (Psi * Coupling(W^T x) + beta), with the W^T step optional. Reverse mode undoes the
steps in the opposite order and returns the negated log-det.

Defaults follow anomalib v1 (``affine_clamping=2.0``, SOFTPLUS, hard permutation).

Notes / deliberate differences from anomalib (which copies FrEIA)
-----------------------------------------------------------------
* ``forward`` also accepts a bare tensor for ``x`` and for ``c`` (anomalib wants 1-tuples/lists);
  it always returns ``((y,), log_jac_det)``. ``jac`` is accepted for API compatibility; the
  log-det is always computed (it costs nothing).
* Input checks: rank and channel count must match ``dims_in``; condition channels, batch and
  spatial sizes must match ``dims_c`` and x. Spatial sizes may differ from ``dims_in`` (every
  operation is per position or convolutional).
* Fewer than 2 channels raises ``ValueError`` (nothing would be left to transform).
* The random permutation is drawn from torch's global RNG at construction (seed with
  ``torch.manual_seed``); buffer / parameter names are our own, so FrEIA checkpoints do not load.

`SequenceFlow` chains blocks (forward: sums the log-dets; reverse: runs them backwards) and
`subnet_fc` / `subnet_conv` build the subnet constructors CFLOW (MLP) and FastFlow / U-Flow
(Conv-ReLU-Conv) use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AllInOneBlock", "SequenceFlow", "FlowSequence", "subnet_fc", "subnet_conv"]

SubnetConstructor = Callable[[int, int], nn.Module]

GLOBAL_AFFINE_TYPES = ("SOFTPLUS", "SIGMOID", "EXP")


# ---------------------------------------------------------------------- small helpers
def _as_shape_list(dims, name: str) -> list[tuple[int, ...]]:
    """Accept ``[(C, ...)]``, ``(C, ...)`` or ``C`` and return a list of shape tuples."""
    if dims is None:
        return []
    if isinstance(dims, int):
        return [(dims,)]
    dims = list(dims)
    if dims and all(isinstance(d, int) for d in dims):  # a single bare shape
        return [tuple(dims)]
    try:
        return [tuple(int(v) for v in shape) for shape in dims]
    except TypeError as error:
        raise ValueError(f"{name} must be a list of shape tuples such as [(C, H, W)], got {dims!r}") from error


def _apply_channel_matrix(x: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Multiply every position's channel vector by ``matrix`` (C, C): a 1x1 convolution."""
    n_spatial = x.dim() - 2
    if n_spatial == 0:
        return F.linear(x, matrix)  # (B, C)
    kernel = matrix.reshape(*matrix.shape, *([1] * n_spatial))  # (C, C, 1, ...)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}.get(n_spatial)
    if conv is None:
        raise ValueError(f"inputs must have 0 to 3 spatial dims, got shape {tuple(x.shape)}")
    return conv(x, kernel)


def _random_rotation(n: int) -> torch.Tensor:
    """A random rotation from SO(n), uniformly (Haar) distributed: QR of a Gaussian matrix,
    with the signs of R's diagonal moved into Q, then one column flipped if det = -1."""
    gaussian = torch.randn(n, n, dtype=torch.float64)
    q, r = torch.linalg.qr(gaussian)
    q = q * torch.sign(torch.diagonal(r))[None, :]
    if torch.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _random_permutation_matrix(n: int) -> torch.Tensor:
    """Rows of the identity in random order: (W x)_i = x_perm[i]."""
    return torch.eye(n, dtype=torch.float64)[torch.randperm(n)]


# ---------------------------------------------------------------------- the block
class AllInOneBlock(nn.Module):
    """Affine coupling + global affine + orthogonal channel mixing, in one invertible block.

    Args:
        dims_in: input shape without the batch dim, as ``[(C,)]``, ``[(C, L)]`` or
            ``[(C, H, W)]`` (a bare tuple is accepted too).
        dims_c: shapes of the condition tensors (same non-channel dims as the input); default none.
        subnet_constructor: ``f(c_in, c_out) -> nn.Module`` mapping (B, c_in, ...) to
            (B, c_out, ...); required (see `subnet_fc`, `subnet_conv`).
        affine_clamping: alpha, the bound of the coupling log-scale (default 2.0).
        gin_block: volume-preserving GIN coupling (default False).
        global_affine_init: initial global scale Psi (default 1.0).
        global_affine_type: ``"SOFTPLUS"`` (default), ``"SIGMOID"`` or ``"EXP"``.
        permute_soft: random rotation instead of a hard permutation (slow above ~512 channels).
        learned_householder_permutation: number of learned Householder reflections (default 0).
        reverse_permutation: apply W^T before the block (default False).

    Example:
        >>> block = AllInOneBlock([(8, 4, 4)], subnet_constructor=subnet_conv(3, 1.0))
        >>> (y,), log_jac_det = block((torch.randn(2, 8, 4, 4),))
        >>> y.shape, log_jac_det.shape
        (torch.Size([2, 8, 4, 4]), torch.Size([2]))
    """

    def __init__(
        self,
        dims_in,
        dims_c=None,
        subnet_constructor: SubnetConstructor | None = None,
        affine_clamping: float = 2.0,
        gin_block: bool = False,
        global_affine_init: float = 1.0,
        global_affine_type: str = "SOFTPLUS",
        permute_soft: bool = False,
        learned_householder_permutation: int = 0,
        reverse_permutation: bool = False,
    ) -> None:
        super().__init__()
        dims_in = _as_shape_list(dims_in, "dims_in")
        dims_c = _as_shape_list(dims_c, "dims_c")
        if len(dims_in) != 1:
            raise ValueError(f"AllInOneBlock takes exactly one input, got dims_in={dims_in}")
        if subnet_constructor is None:
            raise ValueError(
                "AllInOneBlock needs a subnet_constructor f(c_in, c_out) -> nn.Module "
                "(e.g. subnet_fc(...) or subnet_conv(...))"
            )
        shape = dims_in[0]
        for cond_shape in dims_c:
            if tuple(cond_shape[1:]) != tuple(shape[1:]):
                raise ValueError(
                    f"condition shape {cond_shape} must have the same non-channel dims as the input {shape}"
                )
        global_affine_type = str(global_affine_type).upper()
        if global_affine_type not in GLOBAL_AFFINE_TYPES:
            raise ValueError(f"global_affine_type must be one of {GLOBAL_AFFINE_TYPES}, got {global_affine_type!r}")

        self.dims_in = dims_in
        self.dims_c = dims_c
        self.channels = shape[0]
        if self.channels < 2:
            raise ValueError(f"AllInOneBlock needs at least 2 channels, got dims_in={dims_in}")
        self.n_spatial = len(shape) - 1
        if self.n_spatial > 3:
            raise ValueError(f"inputs can have at most 3 spatial dims, got dims_in={dims_in}")
        self.split_len1 = self.channels - self.channels // 2  # C1: passes through, conditions
        self.split_len2 = self.channels // 2  # C2: transformed
        self.condition_channels = sum(c[0] for c in dims_c)
        self.clamp = float(affine_clamping)
        self.gin = bool(gin_block)
        self.global_affine_type = global_affine_type
        self.reverse_pre_permute = bool(reverse_permutation)

        # Subnet: sees x1 (+ conditions), predicts log-scale and shift for x2.
        self.subnet = subnet_constructor(self.split_len1 + self.condition_channels, 2 * self.split_len2)

        # Global affine: gamma such that Psi(gamma) = global_affine_init, beta = 0.
        broadcast = (1, self.channels) + (1,) * self.n_spatial
        gamma0 = self._inverse_activation(float(global_affine_init))
        self.global_scale = nn.Parameter(torch.full(broadcast, gamma0))
        self.global_offset = nn.Parameter(torch.zeros(broadcast))

        # Orthogonal channel mixing W0 (fixed), optionally times learned reflections.
        base = _random_rotation(self.channels) if permute_soft else _random_permutation_matrix(self.channels)
        self.register_buffer("permutation", base.to(torch.get_default_dtype()))  # (C, C)
        n_reflections = int(learned_householder_permutation)
        if n_reflections > 0:
            self.householder_vectors = nn.Parameter(0.2 * torch.randn(n_reflections, self.channels))
        else:
            self.householder_vectors = None
        # A hard permutation only reorders channels: indexing does that exactly, without the C×C
        # matrix product per position a 1×1 convolution would spend on it (speed only).
        self.hard_permutation = not permute_soft and n_reflections == 0

    # -------------------------------------------------------------- pieces
    def _inverse_activation(self, psi: float) -> float:
        """gamma with Psi(gamma) = psi, so the block starts with the requested global scale."""
        kind = self.global_affine_type
        if kind == "SOFTPLUS":
            if psi <= 0:
                raise ValueError(f"global_affine_init must be > 0 for SOFTPLUS, got {psi}")
            # 0.1 * softplus(g, beta=0.5) = 0.2 * log(1 + exp(g / 2)) = psi
            return 2.0 * math.log(math.expm1(5.0 * psi))
        if kind == "SIGMOID":
            if not 0 < psi < 10:
                raise ValueError(f"global_affine_init must be in (0, 10) for SIGMOID, got {psi}")
            return 2.0 - math.log(10.0 / psi - 1.0)  # 10 * sigmoid(g - 2) = psi
        if psi <= 0:
            raise ValueError(f"global_affine_init must be > 0 for EXP, got {psi}")
        return math.log(psi)  # exp(g) = psi

    def global_scale_activation(self) -> torch.Tensor:
        """Psi(gamma), the positive per-channel global scale, shape (1, C, 1, ...)."""
        if self.global_affine_type == "SOFTPLUS":
            return 0.1 * F.softplus(self.global_scale, beta=0.5)
        if self.global_affine_type == "SIGMOID":
            return 10.0 * torch.sigmoid(self.global_scale - 2.0)
        return torch.exp(self.global_scale)

    def permutation_matrix(self) -> torch.Tensor:
        """W = W0 @ H_1 @ ... @ H_K (orthogonal, so W^-1 = W^T), shape (C, C)."""
        matrix = self.permutation
        if self.householder_vectors is not None:
            eye = torch.eye(self.channels, dtype=matrix.dtype, device=matrix.device)
            for v in self.householder_vectors.to(matrix.dtype):
                reflection = eye - 2.0 * torch.outer(v, v) / torch.dot(v, v)
                matrix = matrix @ reflection
        return matrix

    def _mix_channels(self, x: torch.Tensor, weight: torch.Tensor, transpose: bool = False) -> torch.Tensor:
        """W x (or Wᵀ x) at every position; a plain reordering when W is a hard permutation."""
        if self.hard_permutation:
            order = weight.argmax(dim=1)  # (W x)_i = x_order[i]
            return x.index_select(1, torch.argsort(order) if transpose else order)
        return _apply_channel_matrix(x, weight.T if transpose else weight)

    def _coupling_coefficients(self, x1: torch.Tensor, conditions: list[torch.Tensor]):
        """Log-scale s and shift t for x2, from x1 and the conditions."""
        a = 0.1 * self.subnet(torch.cat([x1, *conditions], dim=1))  # (B, 2*C2, ...)
        if a.shape[1] != 2 * self.split_len2 or a.shape[2:] != x1.shape[2:]:
            raise ValueError(
                f"the subnet must return (B, {2 * self.split_len2}, "
                f"{', '.join(map(str, x1.shape[2:]))}) here, got {tuple(a.shape)}"
            )
        s = self.clamp * torch.tanh(a[:, : self.split_len2])  # soft clamp, |s| < alpha
        if self.gin:  # volume preserving: the log-scales sum to zero per sample
            s = s - s.mean(dim=tuple(range(1, s.dim())), keepdim=True)
        t = a[:, self.split_len2 :]
        return s, t

    def _check_inputs(self, x, c):
        if isinstance(x, (tuple, list)):
            if len(x) != 1:
                raise ValueError(f"AllInOneBlock takes one input tensor, got {len(x)}")
            x = x[0]
        expected = (self.channels,) + ("*",) * self.n_spatial
        if x.dim() != self.n_spatial + 2 or x.shape[1] != self.channels:
            raise ValueError(
                f"AllInOneBlock expects input of shape (B, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        if c is None:
            c = []
        elif isinstance(c, torch.Tensor):
            c = [c]
        c = list(c)
        if len(c) != len(self.dims_c):
            raise ValueError(f"AllInOneBlock was built with {len(self.dims_c)} condition(s), got {len(c)}")
        for cond, shape in zip(c, self.dims_c):
            if cond.shape[0] != x.shape[0] or cond.shape[1] != shape[0] or cond.shape[2:] != x.shape[2:]:
                raise ValueError(
                    f"condition must have shape (B={x.shape[0]}, {shape[0]}, "
                    f"{', '.join(map(str, x.shape[2:]))}), got {tuple(cond.shape)}"
                )
        return x, c

    # -------------------------------------------------------------- forward / reverse
    def forward(self, x, c=None, rev: bool = False, jac: bool = True):
        """Run the block (``rev=False``) or its inverse (``rev=True``).

        Args:
            x: ``(tensor,)`` (or a bare tensor) of shape (B, C, ...).
            c: list of condition tensors (B, C_c, ...) or None.
            rev: run the inverse.
            jac: accepted for compatibility; the log-det is always returned.

        Returns:
            ``((y,), log_jac_det)`` with y shaped like x and log_jac_det (B,).
        """
        x, c = self._check_inputs(x, c)
        positions = math.prod(x.shape[2:])  # values per channel
        weight = self.permutation_matrix().to(x.dtype)  # (C, C)

        if self.gin:
            scale = torch.ones_like(self.global_scale, dtype=x.dtype)
            global_log_det = x.new_zeros(())
        else:
            scale = self.global_scale_activation().to(x.dtype)  # (1, C, 1, ...)
            global_log_det = positions * torch.log(scale).sum()
        offset = self.global_offset.to(x.dtype)

        if not rev:
            if self.reverse_pre_permute:
                x = self._mix_channels(x, weight, transpose=True)
            x1, x2 = torch.split(x, [self.split_len1, self.split_len2], dim=1)
            s, t = self._coupling_coefficients(x1, c)
            x2 = x2 * torch.exp(s) + t
            coupling_log_det = s.flatten(1).sum(dim=1)  # (B,)
            x = torch.cat([x1, x2], dim=1)
            x = x * scale + offset
            y = self._mix_channels(x, weight)
            return (y,), coupling_log_det + global_log_det

        # Reverse: undo the permutation, the global affine, then the coupling.
        x = self._mix_channels(x, weight, transpose=True)
        x = (x - offset) / scale
        x1, x2 = torch.split(x, [self.split_len1, self.split_len2], dim=1)
        s, t = self._coupling_coefficients(x1, c)  # x1 is unchanged, so s, t are recomputed
        x2 = (x2 - t) * torch.exp(-s)
        coupling_log_det = s.flatten(1).sum(dim=1)
        x = torch.cat([x1, x2], dim=1)
        if self.reverse_pre_permute:
            x = self._mix_channels(x, weight)
        return (x,), -(coupling_log_det + global_log_det)

    def output_dims(self, input_dims):
        """Output shapes equal input shapes."""
        return input_dims

    def extra_repr(self) -> str:
        return (
            f"dims_in={self.dims_in}, dims_c={self.dims_c}, affine_clamping={self.clamp}, "
            f"gin_block={self.gin}, global_affine_type={self.global_affine_type!r}, "
            f"reverse_permutation={self.reverse_pre_permute}"
        )


# ---------------------------------------------------------------------- chaining blocks
class SequenceFlow(nn.Module):
    """A chain of invertible blocks z = f_K(... f_1(x)), with summed log-dets.

    Each block must follow the `AllInOneBlock` calling convention
    ``block((x,), c=..., rev=...) -> ((y,), log_jac_det)``. Every block receives the same
    conditions ``c`` (as in CFLOW).

    ``forward(x, c=None, rev=False) -> (z, log_jac_det (B,))`` with bare tensors in and out;
    ``rev=True`` runs the blocks backwards (z -> x) and returns the log-det of that inverse.

    Example:
        >>> flow = SequenceFlow([AllInOneBlock([(4,)], subnet_constructor=subnet_fc(16))
        ...                      for _ in range(3)])
        >>> x = torch.randn(5, 4)
        >>> z, log_jac_det = flow(x)
        >>> x_back, _ = flow(z, rev=True)
        >>> torch.allclose(x, x_back, atol=1e-5)
        True
    """

    def __init__(self, blocks: Iterable[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> nn.Module:
        return self.blocks[index]

    def forward(self, x, c=None, rev: bool = False, jac: bool = True):
        if isinstance(x, (tuple, list)):
            (x,) = x
        log_jac_det = x.new_zeros(x.shape[0])  # (B,)
        order = reversed(self.blocks) if rev else self.blocks
        for block in order:
            (x,), block_log_det = block((x,), c=c, rev=rev, jac=jac)
            log_jac_det = log_jac_det + block_log_det
        return x, log_jac_det


FlowSequence = SequenceFlow  # the other common name for the same thing


# ---------------------------------------------------------------------- subnet constructors
def subnet_fc(hidden: int | None = None, *, hidden_ratio: float = 2.0) -> SubnetConstructor:
    """Constructor for an MLP subnet ``Linear(c_in, h) -> ReLU -> Linear(h, c_out)`` on (B, C)
    inputs. ``h = hidden`` if given, else ``int(c_in * hidden_ratio)`` (CFLOW uses 2 * c_in)."""

    def build(c_in: int, c_out: int) -> nn.Module:
        width = int(hidden) if hidden is not None else max(1, int(c_in * hidden_ratio))
        return nn.Sequential(nn.Linear(c_in, width), nn.ReLU(), nn.Linear(width, c_out))

    return build


def subnet_conv(kernel_size: int = 3, hidden_ratio: float = 1.0, *, spatial_dims: int = 2) -> SubnetConstructor:
    """Constructor for a convolutional subnet ``Conv(k) -> ReLU -> Conv(k)`` with "same" zero
    padding and ``int(c_in * hidden_ratio)`` hidden channels (FastFlow: k = 3 or 1; U-Flow).
    ``spatial_dims=1`` builds Conv1d layers for (B, C, L) inputs."""
    if kernel_size % 2 != 1:
        raise ValueError(f"kernel_size must be odd for 'same' padding, got {kernel_size}")
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]

    def build(c_in: int, c_out: int) -> nn.Module:
        hidden = max(1, int(c_in * hidden_ratio))
        return nn.Sequential(
            conv(c_in, hidden, kernel_size, padding=kernel_size // 2),
            nn.ReLU(),
            conv(hidden, c_out, kernel_size, padding=kernel_size // 2),
        )

    return build
