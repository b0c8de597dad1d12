"""Bilevel problems: meta-gradients through inner optimisations (mixed or reverse mode) and implicit
hypergradients of solved inner problems."""

from ._implicit import implicit_hypergradient
from ._unroll import INNER_GRADIENT, mixed_mode_gradient, unroll

__all__ = ["INNER_GRADIENT", "implicit_hypergradient", "mixed_mode_gradient", "unroll"]
