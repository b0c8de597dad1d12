r"""Layers built on structured matrix functions (matrix backpropagation, Ionescu et al. ICCV 2015)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array, Float

from ..linalg import logm_spd, top_k_projector


class O2PPooling(eqx.Module):
    r"""Second-order (log-covariance, O2P) pooling of a set of feature vectors:

    .. math::  F \in \mathbb{R}^{N \times d} \;\mapsto\; \log\!\big(F^\top F / N + ε I\big) \in \mathbb{R}^{d \times d},

    flattened to its upper triangle (d(d+1)/2 values, off-diagonal entries scaled by √2 so that the
    Euclidean norm of the vector equals the Frobenius norm of the matrix) when ``flatten``. With N < d,
    FᵀF is rank-deficient and its zero eigenvalues are tied at ε; the Daleckii–Krein first and second derivatives
    of :func:`jaxnls.linalg.logm_spd` are exact there, where the eigenvector formula is not.

    Called on an ``(N, d)`` feature matrix it returns the ``(d(d+1)/2,)`` vector, or the ``(d, d)`` matrix
    without ``flatten``.

    Attributes:
        epsilon: ε > 0, the ridge added to the covariance before the logarithm (default 1e-3).
        flatten: return the scaled upper triangle instead of the matrix (default True).
    """

    epsilon: float = 1e-3
    flatten: bool = True

    def __call__(self, features: Float[Array, "N d"]) -> Float[Array, ...]:
        features = jnp.asarray(features)
        if features.ndim != 2:
            raise ValueError(f"O2PPooling expects an (N, d) feature matrix, got shape {features.shape}")
        n, d = features.shape
        covariance = features.T @ features / n + self.epsilon * jnp.eye(d, dtype=features.dtype)
        pooled = logm_spd(covariance)
        if not self.flatten:
            return pooled
        rows, cols = jnp.triu_indices(d)
        weights = jnp.where(rows == cols, 1.0, jnp.sqrt(2.0)).astype(pooled.dtype)
        return pooled[rows, cols] * weights


class NormalizedCut(eqx.Module):
    r"""Spectral relaxation of the k-way normalized cut, differentiable end to end.

    From a symmetric non-negative affinity W (n×n) with degrees :math:`D = \mathrm{diag}(W\mathbf 1)`, the layer
    returns the projector onto the top-k eigenvectors of :math:`M = D^{-1/2} W D^{-1/2}`,
    :math:`P = U_k U_k^\top` (:func:`jaxnls.linalg.top_k_projector`). :meth:`loss` compares it with the
    projector of a target partition :math:`Y \in \{0,1\}^{n\times k}`, whose relaxed solution spans
    :math:`D^{1/2} Y`: :math:`\tfrac12\|P - Π(D^{1/2}Y)\|_F^2`, Π the orthogonal projector onto a span.

    Called on an ``(n, n)`` affinity it returns the ``(n, n)`` projector P.

    Attributes:
        num_segments: k, the number of segments (eigenvectors kept).
    """

    num_segments: int

    def __call__(self, affinity: Float[Array, "n n"]) -> Float[Array, "n n"]:
        return top_k_projector(self.normalized_affinity(affinity), self.num_segments)

    def normalized_affinity(self, affinity: Float[Array, "n n"]) -> Float[Array, "n n"]:
        r""":math:`M = D^{-1/2} W D^{-1/2}` of an ``(n, n)`` affinity W (every degree must be positive)."""
        affinity = jnp.asarray(affinity)
        if affinity.ndim != 2 or affinity.shape[0] != affinity.shape[1]:
            raise ValueError(f"NormalizedCut expects a square affinity matrix, got shape {affinity.shape}")
        inv_sqrt_degree = 1.0 / jnp.sqrt(jnp.sum(affinity, axis=1))
        return affinity * inv_sqrt_degree[:, None] * inv_sqrt_degree[None, :]

    def target_projector(self, affinity: Float[Array, "n n"], labels: Float[Array, "n k"]) -> Float[Array, "n n"]:
        r"""The ``(n, n)`` orthogonal projector onto :math:`D^{1/2}Y`, the relaxed solution of the partition
        given by the one-hot ``labels`` ``(n, k)`` (every segment non-empty)."""
        basis = jnp.sqrt(jnp.sum(affinity, axis=1))[:, None] * labels  # D^{1/2} Y, orthogonal columns
        basis = basis / jnp.linalg.norm(basis, axis=0)[None, :]
        return basis @ basis.T

    def loss(self, affinity: Float[Array, "n n"], labels: Float[Array, "n k"]) -> Float[Array, ""]:
        r"""Half the squared Frobenius distance between this layer's projector and :meth:`target_projector`,
        for an ``(n, n)`` affinity and one-hot ``(n, k)`` labels."""
        if labels.shape != (affinity.shape[0], self.num_segments):
            raise ValueError(f"labels must be ({affinity.shape[0]}, {self.num_segments}) one-hot, got {labels.shape}")
        return 0.5 * jnp.sum((self(affinity) - self.target_projector(affinity, labels)) ** 2)
