"""The per-iteration callback and the progress line: what the compiled loop reports (checked against the
residual evaluated here and the Solution), stop requests (against solves cut short by max_steps), derivatives
unchanged by a callback (against central differences), and clear errors."""

import io

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnls

T = jnp.linspace(0.0, 3.0, 20)
Y = 2.0 * jnp.exp(-0.7 * T) + 0.01 * jnp.sin(7.0 * T)


def residual(p, args):
    t, y = args
    return p[0] * jnp.exp(-p[1] * t) - y


STARTS = jnp.asarray([[1.0, 0.1], [1.5, 0.5], [3.0, 2.0], [0.5, 1.5]])


class Recorder:
    def __init__(self):
        self.calls = []

    def __call__(self, info):
        self.calls.append(info)


def test_the_callback_reports_every_iteration_of_a_solve():
    """One call per iteration (0 = the start), the start's cost as the residual evaluated here gives it, the
    costs never rising, and the last call agreeing with the Solution."""
    record = Recorder()
    x0 = STARTS[0]
    sol = jaxnls.solve(residual, x0, (T, Y), callback=record)
    calls = record.calls
    assert len(calls) == int(sol.num_steps) + 1
    assert [int(c.iteration[0]) for c in calls] == list(range(int(sol.num_steps) + 1))
    assert all(c.problem.tolist() == [0] for c in calls)
    start_cost = 0.5 * float(np.sum(np.asarray(residual(x0, (T, Y))) ** 2))
    assert float(calls[0].cost[0]) == pytest.approx(start_cost, rel=1e-14)
    costs = np.array([float(c.cost[0]) for c in calls])
    assert np.all(np.diff(costs) <= 0)
    accepted = np.array([bool(c.accepted[0]) for c in calls[1:]])
    changes = np.array([float(c.cost_change[0]) for c in calls[1:]])
    # (below √ε·cost the loop measures the decrease by the trapezoidal rule on the gradient, more accurately
    # than a difference of costs can: those are compared only above it)
    resolved = accepted & (changes > 1e-7 * costs[:-1])
    assert resolved.sum() >= 4
    np.testing.assert_allclose(changes[resolved], (costs[:-1] - costs[1:])[resolved], rtol=1e-9)
    assert np.all(changes[~accepted] == 0)
    last = calls[-1]
    assert float(last.cost[0]) == float(sol.cost)
    assert int(last.status[0]) == int(sol.status) and jaxnls.Status(int(sol.status)).converged
    assert all(int(c.status[0]) == jaxnls.Status.RUNNING for c in calls[:-1])
    assert last.control_name == "damping"
    assert float(last.gradient_norm[0]) == pytest.approx(float(sol.gradient_norm), rel=1e-12)


@pytest.mark.parametrize("working_set", [None, 1, 2])
def test_a_stop_request_ends_that_problem_where_max_steps_would_and_leaves_the_others(working_set):
    """Problem 1 asked to stop after 3 steps: STOPPED, with the parameters of a solve cut at max_steps=3; every
    other problem bit-identical to a solve without the callback (also through working sets)."""

    def stop_problem_1(info):
        return (info.problem == 1) & (info.iteration >= 3)

    kwargs = dict(batched=True, args_axes=None, working_set=working_set)
    free = jaxnls.solve(residual, STARTS, (T, Y), **kwargs)
    stopped = jaxnls.solve(residual, STARTS, (T, Y), callback=stop_problem_1, **kwargs)
    cut = jaxnls.solve(residual, STARTS[1], (T, Y), max_steps=3)
    assert int(stopped.status[1]) == jaxnls.Status.STOPPED and not bool(stopped.converged[1])
    assert int(stopped.num_steps[1]) == 3 and int(cut.status) == jaxnls.Status.MAX_STEPS
    np.testing.assert_array_equal(stopped.params[1], cut.params)
    others = np.array([0, 2, 3])
    np.testing.assert_array_equal(stopped.params[others], free.params[others])
    np.testing.assert_array_equal(stopped.status[others], free.status[others])


def test_a_scalar_stop_request_stops_every_problem_it_is_shown():
    sol = jaxnls.solve(
        residual, STARTS, (T, Y), batched=True, args_axes=None, callback=lambda info: bool(np.max(info.iteration) >= 1)
    )
    assert np.all(np.asarray(sol.status) == jaxnls.Status.STOPPED)
    assert np.all(np.asarray(sol.num_steps) == 1)
    assert "STOPPED" in sol.summary()


@pytest.mark.parametrize("adjoint", [jaxnls.Implicit(), jaxnls.Unroll()], ids=["implicit", "unroll"])
def test_derivatives_through_a_solve_with_a_callback_match_central_differences(adjoint):
    """The callback only observes: d params / d y through the solve (float64) against central differences of
    the solve itself."""
    record = Recorder()

    def first_param(y):
        return jaxnls.solve(residual, STARTS[1], (T, y), callback=record, adjoint=adjoint, max_steps=40).params[0]

    gradient = np.asarray(jax.grad(first_param)(Y))
    assert record.calls  # (the callback ran under differentiation)
    h = 1e-6
    for i in (0, 7, 19):
        e = jnp.zeros_like(Y).at[i].set(h)
        central = (float(first_param(Y + e)) - float(first_param(Y - e))) / (2 * h)
        assert gradient[i] == pytest.approx(central, rel=1e-6, abs=1e-9)


def test_graph_solve_reports_iterations_and_takes_stop_requests():
    graph = jaxnls.graph
    costs = [
        graph.CostGroup(
            lambda a, b, d: b - a - d,
            kinds=("x", "x"),
            indices=jnp.asarray([[0, 1], [1, 2]]),
            data=jnp.asarray([[1.0], [2.0]]),
        ),
        graph.CostGroup(
            lambda a, d: jnp.sin(a) - d, kinds=("x",), indices=jnp.asarray([[2]]), data=jnp.asarray([[0.5]])
        ),
    ]
    problem = graph.FactorGraph(variables={"x": jnp.zeros((3, 1))}, costs=costs, fixed={"x": jnp.asarray([0])})
    solver = jaxnls.LevenbergMarquardt(linear_solver=graph.SparseDirect())
    record = Recorder()
    sol = graph.solve(problem, solver=solver, callback=record)
    assert len(record.calls) == int(sol.num_steps) + 1 and float(record.calls[-1].cost[0]) == float(sol.cost)
    stopped = graph.solve(problem, solver=solver, callback=lambda info: info.iteration >= 1)
    assert int(stopped.status) == jaxnls.Status.STOPPED and int(stopped.num_steps) == 1


def test_callback_errors_are_clear():
    with pytest.raises(TypeError, match="callback must be a function"):
        jaxnls.solve(residual, STARTS[0], (T, Y), callback="print")
    with pytest.raises(Exception, match="must return None, a bool, or a bool array of shape"):
        jax.block_until_ready(jaxnls.solve(residual, STARTS[0], (T, Y), callback=lambda info: np.zeros(3, bool)))
    with pytest.raises(ValueError, match=r"cannot be used inside jax.vmap.*batched=True"):
        jax.vmap(lambda p: jaxnls.solve(residual, p, (T, Y), callback=Recorder()).params)(STARTS)


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_draws_on_a_terminal_and_nothing_elsewhere():
    terminal, pipe = FakeTerminal(), io.StringIO()
    on_terminal = jaxnls.ProgressLine(terminal, interval=0.0, label="fit: ")
    sol = jaxnls.solve(residual, STARTS[2], (T, Y), callback=on_terminal)
    on_terminal.close()
    text = terminal.getvalue()
    redraws = text.rstrip("\n").split("\r")[1:]
    assert len(redraws) == int(sol.num_steps) + 1 and text.endswith("\n")
    assert redraws[0].startswith("fit: iter 0   cost") and "rel. decrease" not in redraws[0]
    assert redraws[-1].startswith(f"fit: iter {int(sol.num_steps)}   cost {float(sol.cost):.6e}   rel. decrease")
    in_pipe = jaxnls.ProgressLine(pipe, interval=0.0)
    jaxnls.solve(residual, STARTS[2], (T, Y), callback=in_pipe)
    in_pipe.close()
    assert pipe.getvalue() == ""
    delayed_terminal = FakeTerminal()
    delayed = jaxnls.ProgressLine(delayed_terminal, delay=3600.0)
    jaxnls.solve(residual, STARTS[2], (T, Y), callback=delayed)
    delayed.close()
    assert delayed_terminal.getvalue() == ""


def test_progress_line_of_a_batch_counts_running_problems():
    terminal = FakeTerminal()
    line = jaxnls.ProgressLine(terminal, interval=0.0)
    jaxnls.solve(residual, STARTS, (T, Y), callback=line, batched=True, args_axes=None, working_set=None)
    line.close()
    first = terminal.getvalue().split("\r")[1]
    assert first.startswith(f"iter 0   running {STARTS.shape[0]}/{STARTS.shape[0]}   cost ")


@pytest.mark.parametrize("option", [dict(interval=-1.0), dict(delay=float("nan")), dict(interval="1")])
def test_progress_line_rejects_bad_options(option):
    with pytest.raises(ValueError, match="ProgressLine"):
        jaxnls.ProgressLine(**option)


# -- history=K ------------------------------------------------------------------------------------


def test_history_holds_the_last_iterations_as_solves_cut_at_max_steps_see_them():
    """Row for iteration k: the cost of the same solve stopped by max_steps=k (an independent solve), the start's
    cost from the residual evaluated here; K smaller than the run keeps the last K, larger pads with NaN."""
    x0 = STARTS[2]
    full = jaxnls.solve(residual, x0, (T, Y), history=64)
    steps = int(full.num_steps)
    h = full.history
    assert h.cost.shape == (64,)
    np.testing.assert_array_equal(h.iteration[: steps + 1], np.arange(steps + 1))
    assert np.all(np.isnan(np.asarray(h.cost[steps + 1 :])))
    start_cost = 0.5 * float(np.sum(np.asarray(residual(x0, (T, Y))) ** 2))
    assert float(h.cost[0]) == pytest.approx(start_cost, rel=1e-14) and float(h.accepted[0]) == 1.0
    for k in (1, 3, steps):
        # (the cut solve keeps a history too: the ring in the loop's state changes how XLA fuses the step solve,
        # which may move the last bit of a step; the iterations are the same)
        cut = jaxnls.solve(residual, x0, (T, Y), max_steps=k, history=64)
        assert float(h.cost[k]) == float(cut.cost)
        assert float(h.gradient_norm[k]) == pytest.approx(float(cut.gradient_norm), rel=1e-12)
    assert float(h.cost[steps]) == float(full.cost)
    assert int(np.sum(np.asarray(h.accepted[1 : steps + 1]))) == int(full.num_accepted)
    last = jaxnls.solve(residual, x0, (T, Y), history=3).history
    np.testing.assert_array_equal(last.iteration, [steps - 2, steps - 1, steps])
    np.testing.assert_array_equal(last.cost, h.cost[steps - 2 : steps + 1])
    assert jaxnls.solve(residual, x0, (T, Y)).history is None


def test_history_of_a_batch_equals_solo_histories_and_works_under_jit():
    """Bit for bit through a working set (the batch invariant); inside a caller's jit (compiled without the
    top-level compiler options, so rounded differently in the last bits) the same figures."""
    batch = jaxnls.solve(
        residual, STARTS, (T, Y), batched=True, args_axes=(None, None), history=12, working_set=2
    ).history
    assert batch.cost.shape == (STARTS.shape[0], 12)
    for i in range(STARTS.shape[0]):
        alone = jaxnls.solve(residual, STARTS[i], (T, Y), history=12).history
        np.testing.assert_array_equal(batch.cost[i], alone.cost)
        np.testing.assert_array_equal(batch.iteration[i], alone.iteration)

    @jax.jit
    def batch_history(y):
        return jaxnls.solve(residual, STARTS, (T, y), batched=True, args_axes=(None, None), history=12).history

    jitted = batch_history(Y)
    np.testing.assert_array_equal(jitted.iteration, batch.iteration)
    np.testing.assert_allclose(jitted.cost, batch.cost, rtol=1e-12, atol=1e-300)


def test_graph_solve_keeps_a_history():
    graph = jaxnls.graph
    problem = graph.FactorGraph(
        variables={"x": jnp.zeros((3, 1))},
        costs=[
            graph.CostGroup(
                lambda a, b, d: b - a - d,
                kinds=("x", "x"),
                indices=jnp.asarray([[0, 1], [1, 2]]),
                data=jnp.asarray([[1.0], [2.0]]),
            ),
            graph.CostGroup(
                lambda a, d: jnp.sin(a) - d, kinds=("x",), indices=jnp.asarray([[2]]), data=jnp.asarray([[0.5]])
            ),
        ],
        fixed={"x": jnp.asarray([0])},
    )
    sol = graph.solve(problem, solver=jaxnls.LevenbergMarquardt(linear_solver=graph.SparseDirect()), history=50)
    steps = int(sol.num_steps)
    assert float(sol.history.cost[steps]) == float(sol.cost) and float(sol.history.cost[0]) == float(sol.initial_cost)


@pytest.mark.parametrize("bad", [-1, 2.5, True, "8"])
def test_history_must_be_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="history must be an int >= 0"):
        jaxnls.solve(residual, STARTS[0], (T, Y), history=bad)


def test_progress_line_draws_in_a_jupyter_output_stream():
    """ipykernel's OutStream is not a terminal but redraws on a carriage return: the line is live there."""
    stream_type = type("OutStream", (io.StringIO,), {"__module__": "ipykernel.iostream"})
    stream = stream_type()
    line = jaxnls.ProgressLine(stream, interval=0.0)
    assert line.live
    jaxnls.solve(residual, STARTS[2], (T, Y), callback=line)
    line.close()
    assert stream.getvalue().startswith("\riter 0   cost ")


# --------------------------------------------------------------------------------------------------
# jaxnls.Progress: the bar for training loops and benchmark runs
# --------------------------------------------------------------------------------------------------


def test_progress_bar_draws_on_a_terminal_with_its_figures_and_yields_every_item():
    terminal = FakeTerminal()
    bar = jaxnls.Progress(range(5), label="training", stream=terminal, interval=0.0)
    seen = []
    for step in bar:
        seen.append(step)
        bar.note(loss=jnp.asarray(1.0 / (step + 1)))
    assert seen == list(range(5)) and bar.count == 5
    text = terminal.getvalue()
    assert text.endswith("\n")
    redraws = text.rstrip("\n").split("\r")[1:]
    # one redraw per item (interval 0) and the closing one
    assert len(redraws) == 6
    assert redraws[0].startswith("training  1/5 ") and "left" in redraws[0]
    last = redraws[-1].rstrip()
    assert last.startswith("training  5/5 " + "━" * 24) and "loss 0.2  " in last and "left" not in last


def test_progress_bar_is_silent_in_a_pipe_and_counts_without_a_length():
    pipe = io.StringIO()
    assert list(jaxnls.Progress(iter("abc"), stream=pipe, interval=0.0)) == ["a", "b", "c"]
    assert pipe.getvalue() == ""
    terminal = FakeTerminal()
    bar = jaxnls.Progress((i for i in range(3)), stream=terminal, interval=0.0)
    assert bar.total is None and list(bar) == [0, 1, 2]
    assert terminal.getvalue().rstrip("\n").split("\r")[-1].startswith("3  ")  # a count, no bar
    sized = jaxnls.Progress((i for i in range(4)), total=4, stream=FakeTerminal(), interval=0.0)
    list(sized)
    assert sized.stream.getvalue().rstrip("\n").split("\r")[-1].startswith("4/4 ")


def test_progress_bar_draws_nothing_for_a_loop_shorter_than_its_delay():
    terminal = FakeTerminal()
    assert list(jaxnls.Progress(range(3), stream=terminal, delay=3600.0)) == [0, 1, 2]
    assert terminal.getvalue() == ""


@pytest.mark.parametrize(
    "option", [dict(interval=-0.5), dict(interval=True), dict(delay=float("inf")), dict(total=-1), dict(total=2.0)]
)
def test_progress_bar_rejects_bad_options(option):
    with pytest.raises(ValueError, match=r"Progress\("):
        jaxnls.Progress(range(3), **option)
