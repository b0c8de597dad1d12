"""``vmap_traced_once`` against ``jax.vmap`` itself: the same values, dtypes, derivatives and program."""

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnls._batching import vmap_traced_once


def _step(state, args, flag):
    """Something shaped like one problem's step: pytrees in and out, a shared and a batched argument, jnp
    functions with their own jits (where, clip), reductions, a cond on an unbatched flag, a Python scalar."""
    x, count = state["x"], state["count"]
    shared, own = args
    y = jnp.where(x > 0, jnp.sin(x) * own, jnp.clip(x, -0.5, 0.5)) + shared
    total = jax.lax.cond(flag, lambda: jnp.sum(y * y), lambda: jnp.max(jnp.abs(y)))
    return {"x": y / (1.0 + total), "count": count + (total > 1.0)}, (total, 2.0 * shared[0])


@pytest.fixture
def batch():
    rng = np.random.default_rng(0)
    state = {"x": jnp.asarray(rng.normal(size=(5, 3))), "count": jnp.arange(5, dtype=jnp.int32)}
    args = (jnp.asarray(rng.normal(size=3)), jnp.asarray(rng.normal(size=(5, 3))))
    return state, args


@pytest.mark.parametrize("flag", [True, False])
def test_values_and_dtypes_are_those_of_jax_vmap(batch, flag):
    state, args = batch
    axes = (0, (None, 0), None)
    expected = jax.vmap(_step, in_axes=axes, out_axes=(0, (0, None)))(state, args, flag)
    got = vmap_traced_once(_step, in_axes=axes, out_axes=(0, (0, None)))(state, args, flag)
    assert jax.tree_util.tree_structure(got) == jax.tree_util.tree_structure(expected)
    for g, e in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(expected), strict=True):
        assert g.dtype == e.dtype and g.shape == e.shape and g.weak_type == e.weak_type
        np.testing.assert_array_equal(g, e)


@pytest.mark.parametrize("axis", [1, -1])
def test_other_batch_axes_read_as_jax_vmap_reads_them(axis):
    fn = lambda a, b: (jnp.sum(a * b), a * b)
    a = jnp.asarray(np.random.default_rng(1).normal(size=(3, 4)))
    b = jnp.arange(3.0)
    expected = jax.vmap(fn, in_axes=(axis, None), out_axes=(0, 1))(a, b)
    got = vmap_traced_once(fn, in_axes=(axis, None), out_axes=(0, 1))(a, b)
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape
        np.testing.assert_array_equal(g, e)


def test_a_python_scalar_stays_weakly_typed():
    # a weakly typed (Python) scalar must not promote a float32 batch to float64 under x64
    fn = lambda v, s: v * s
    v = jnp.ones((4, 2), jnp.float32)
    got = vmap_traced_once(fn, in_axes=(0, None))(v, 3.0)
    assert got.dtype == jax.vmap(fn, in_axes=(0, None))(v, 3.0).dtype == jnp.float32


def test_closures_over_an_enclosing_trace_and_derivatives_match(batch):
    state, args = batch

    def loss(scale, mapper):
        # the mapped function closes over `scale`, a tracer of the enclosing jit and grad
        out, (total, _) = mapper(lambda s, a, f: _step(s, (a[0] * scale, a[1]), f), in_axes=(0, (None, 0), None))(
            state, args, True
        )
        return jnp.sum(out["x"] ** 2) + jnp.sum(total)

    grad_vmap = jax.jit(jax.grad(lambda c: loss(c, jax.vmap)))(0.7)
    grad_once = jax.jit(jax.grad(lambda c: loss(c, vmap_traced_once)))(0.7)
    np.testing.assert_allclose(grad_once, grad_vmap, rtol=1e-12)
    step = 1e-6  # and both against central differences
    central = (loss(0.7 + step, jax.vmap) - loss(0.7 - step, jax.vmap)) / (2 * step)
    np.testing.assert_allclose(grad_once, central, rtol=1e-6)
    # forward mode too
    tangent_once = jax.jvp(lambda c: loss(c, vmap_traced_once), (0.7,), (1.0,))[1]
    np.testing.assert_allclose(tangent_once, grad_vmap, rtol=1e-12)


def test_the_batched_program_is_the_one_jax_vmap_builds(batch):
    # the claim the loop relies on: XLA gets the same operations, so the compiled solve is unchanged
    state, args = batch
    axes = (0, (None, 0), None)

    def primitives(mapper):
        program = jax.make_jaxpr(lambda s, a: mapper(_step, in_axes=axes)(s, a, True))(state, args)

        def walk(jaxpr):
            for eqn in jaxpr.eqns:
                if eqn.primitive.name in ("pjit", "jit"):  # (jax.vmap keeps jnp's own jits as calls: inline them)
                    yield from walk(eqn.params["jaxpr"].jaxpr)
                    continue
                yield eqn.primitive.name
                for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                    yield from walk(sub)

        return sorted(walk(program.jaxpr))

    assert primitives(vmap_traced_once) == primitives(jax.vmap)
