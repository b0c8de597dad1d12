r"""Factor graphs: thousands of variables (stacked jaxlie groups or Euclidean blocks) and tens of
thousands of small cost terms, solved with a block-sparse Jacobian that is never densified.

.. code-block:: python

    import jaxlie, jaxnls
    graph = jaxnls.graph.FactorGraph(
        variables={"pose": poses0},                                    # SE2 stacked: (N, 4)
        costs=[
            jaxnls.graph.CostGroup(jaxnls.graph.between, ("pose", "pose"), edges, measured, sqrt_info),
            jaxnls.graph.CostGroup(jaxnls.graph.prior, ("pose",), [[0]], anchor, 1e6 * jnp.eye(3)[None]),
        ],
    )
    sol = jaxnls.graph.solve(graph)                                    # Dogleg + sparse direct (CHOLMOD or QDLDL)
    sol = jaxnls.graph.solve(graph, solver=jaxnls.LevenbergMarquardt(linear_solver=jaxnls.graph.PCG()))
    jax.grad(lambda m: loss(jaxnls.graph.solve(graph_from(m)).params))(measured)   # implicit adjoint

Cost: :math:`\tfrac12\sum\|L r\|^2 = \tfrac12\sum \|r\|^2_Σ` (GTSAM's ``graph.error(values)``).
"""

from ._blas import BLAS_VARIABLE, blas_in_use, cholmod_bindings, use_blas
from ._factors import between, between_linearization, from_gtsam_pose3, prior
from ._files import (
    bal_graph_problem,
    bal_reprojection,
    point_in_frame,
    pose_graph_problem,
    updated_bal,
    updated_pose_graph,
)
from ._graph import CostGroup, FactorGraph
from ._initialization import chordal_initialization
from ._linear import PCG, AbstractGraphLinearSolver, BlockSparseLinearization, NormalOperator, SparseDirect
from ._marginals import marginal_covariance
from ._schur import SchurDirect, SchurPCG
from ._solve import default_linear_solver, solve

__all__ = [
    "BLAS_VARIABLE",
    "PCG",
    "AbstractGraphLinearSolver",
    "BlockSparseLinearization",
    "CostGroup",
    "FactorGraph",
    "NormalOperator",
    "SchurDirect",
    "SchurPCG",
    "SparseDirect",
    "bal_graph_problem",
    "bal_reprojection",
    "between",
    "between_linearization",
    "blas_in_use",
    "cholmod_bindings",
    "chordal_initialization",
    "default_linear_solver",
    "from_gtsam_pose3",
    "marginal_covariance",
    "point_in_frame",
    "pose_graph_problem",
    "prior",
    "solve",
    "updated_bal",
    "updated_pose_graph",
    "use_blas",
]
