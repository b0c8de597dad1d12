"""jaxnls.swat autoencoder and latent search: functional reconstruction of held-out random networks
against the trivial baseline (each network's own mean output), latent fitting of a task, and the hard
network's size and test error against a dense network of the same depth trained on the same budget;
the regularisers, hardening and size counts against closed forms and an independent NumPy count; the
latent objective's gradient against central differences."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import directional_difference

from jaxnls.swat import (
    SearchConfig,
    evaluate_reconstruction,
    forward,
    harden,
    load_autoencoder,
    load_pretrained,
    make_task,
    mse,
    network_size,
    prune,
    random_mlp,
    refine,
    regularizers,
    retrain,
    save_autoencoder,
    search,
    soft_threshold,
    train_autoencoder,
    train_dense,
)
from jaxnls.swat._family import MAX_DEPTH, MAX_WIDTH, connection_fraction, used_layers

# the tests that share the trained model run on one xdist worker (pyproject: --dist loadgroup)
pytestmark = pytest.mark.xdist_group("swat_trained_model")
TRAIN_STEPS = 400
SEARCH = SearchConfig(steps=300, starts=2)


@pytest.fixture(scope="module")
def trained():
    model, losses = train_autoencoder(jax.random.PRNGKey(0), steps=TRAIN_STEPS, batch_size=32)
    return model, np.asarray(losses)


@pytest.fixture(scope="module")
def matyas_fit(trained):
    model, _ = trained
    task = make_task("matyas", 0)
    x, y = np.float32(task.x_train), np.float32(task.y_train)
    found = search(model, x, y, jax.random.PRNGKey(1), SEARCH)
    refined = refine(model, found, x, y, jax.random.PRNGKey(2), SEARCH)
    dense = train_dense(x, y, jax.random.PRNGKey(3), int(refined.network.depth), SEARCH)
    return task, found, refined, dense


@pytest.mark.slow
def test_reconstruction_of_held_out_networks_falls_well_below_the_trivial_baseline(trained):
    model, losses = trained
    figures = evaluate_reconstruction(model, jax.random.PRNGKey(99))  # networks never seen in training
    assert figures["reconstruction"] < 0.35 * figures["baseline"], figures
    assert np.mean(losses[-50:]) < 0.5 * np.mean(losses[:10])


@pytest.mark.slow
def test_latent_fitting_lowers_the_task_loss(matyas_fit):
    task, found, _, _ = matyas_fit
    x, y = np.float32(task.x_train), np.float32(task.y_train)
    assert float(mse(found.network, x, y)) < 0.7 * float(found.initial_train_mse)
    assert float(jnp.mean(found.loss_history[-20:])) < 0.7 * float(jnp.mean(found.loss_history[:5]))
    assert float(mse(found.network, x, y)) < np.var(y)  # better than the best constant


@pytest.mark.slow
def test_hard_network_is_sparser_than_a_dense_one_at_comparable_test_error(matyas_fit):
    task, _, refined, dense = matyas_fit
    xt, yt = np.float32(task.x_test), np.float32(task.y_test)
    swat_error, dense_error = float(mse(refined.network, xt, yt)), float(mse(dense, xt, yt))
    variance = float(np.var(yt))
    # comparable: within twice the dense network's error, and explaining over 98 % of the test variance;
    # with at most 80 % of its weights
    assert swat_error <= 2.0 * dense_error and swat_error < 0.02 * variance, (swat_error, dense_error, variance)
    assert int(network_size(refined.network)["nonzeros"]) <= 0.8 * int(network_size(dense)["nonzeros"])
    # the hard network is a member of the family: 0/1 masks, one-hot activations, nothing below t
    net = refined.network
    assert set(np.unique(np.asarray(net.neuron_mask))) <= {0.0, 1.0}
    np.testing.assert_array_equal(np.asarray(net.activation_logits).sum(-1), 1.0)
    weights = np.asarray(net.weights)
    assert np.all((weights == 0) | (np.abs(weights) >= float(refined.threshold)))


def _numpy_size(net):
    """Count what a person would: active neurons, and weights between active units (inputs always on)."""
    mask, w = np.asarray(net.neuron_mask) > 0, np.asarray(net.weights)
    depth, nonzeros = int(net.depth), 0
    for layer in range(depth):
        sources = [0, 1] if layer == 0 else [j for j in range(MAX_WIDTH) if mask[layer - 1, j]]
        for j in range(MAX_WIDTH):
            if mask[layer, j]:
                nonzeros += sum(w[layer, j, i] != 0 for i in sources)
    last = [j for j in range(MAX_WIDTH) if mask[depth - 1, j]]
    nonzeros += sum(np.asarray(net.output_weights)[j] != 0 for j in last)
    return int(mask[:depth].sum()), nonzeros


@pytest.mark.parametrize("seed", range(6))
def test_harden_and_size_against_an_independent_count(seed):
    spec = random_mlp(jax.random.PRNGKey(seed), jnp.float64)
    relaxed = eqx.tree_at(
        lambda s: s.neuron_mask,
        spec,
        jax.random.uniform(jax.random.PRNGKey(seed + 100), (MAX_DEPTH, MAX_WIDTH), jnp.float64) * spec.neuron_mask,
    )
    threshold = 0.3
    hard = harden(relaxed, threshold)
    neurons, nonzeros = _numpy_size(hard)
    size = network_size(hard)
    assert int(size["active_neurons"]) == neurons and int(size["nonzeros"]) == nonzeros
    kept = np.asarray(relaxed.neuron_mask) > 0.5
    np.testing.assert_array_equal(np.asarray(hard.neuron_mask) > 0, kept)
    # at an extreme sharpness the soft threshold is the hard one, so the relaxed network with those
    # masks computes what the hard network computes
    soft, _, _ = soft_threshold(
        eqx.tree_at(lambda s: s.neuron_mask, relaxed, jnp.asarray(kept, jnp.float64)), threshold, 1e9
    )
    x = jax.random.uniform(jax.random.PRNGKey(7), (64, 2), jnp.float64, -1.0, 1.0)
    from jaxnls.swat import forward

    np.testing.assert_allclose(forward(hard, x), forward(soft, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 3, 5])  # depths 2, 4, 3
def test_connection_fraction_is_the_share_of_a_dense_networks_weights(seed):
    """With hard masks and no gates: the non-zero weights a hard network keeps over those of the dense network of
    its depth, both counted independently in NumPy (every weight non-zero: threshold 0)."""
    spec = random_mlp(jax.random.PRNGKey(seed), jnp.float64)
    k_weights, k_output, k_masks = jax.random.split(jax.random.PRNGKey(seed + 100), 3)
    spec = eqx.tree_at(  # (random members have zero weights of their own: replace them by non-zero ones)
        lambda s: (s.weights, s.output_weights),
        spec,
        (
            jax.random.normal(k_weights, (MAX_DEPTH, MAX_WIDTH, MAX_WIDTH), jnp.float64),
            jax.random.normal(k_output, (MAX_WIDTH,), jnp.float64),
        ),
    )
    relaxed = eqx.tree_at(
        lambda s: s.neuron_mask, spec, jax.random.uniform(k_masks, (MAX_DEPTH, MAX_WIDTH), jnp.float64)
    )
    hard = harden(relaxed, 0.0)
    dense = harden(
        eqx.tree_at(lambda s: s.neuron_mask, spec, used_layers(spec.depth, jnp.float64) * jnp.ones((1, MAX_WIDTH))), 0.0
    )
    _, kept = _numpy_size(hard)
    _, full = _numpy_size(dense)
    assert 0 < kept < full
    np.testing.assert_allclose(connection_fraction(hard), kept / full, rtol=1e-12)


def test_regularizers_closed_forms():
    spec = random_mlp(jax.random.PRNGKey(3), jnp.float64)
    depth = int(spec.depth)
    on = eqx.tree_at(
        lambda s: (s.neuron_mask, s.weights, s.output_weights),
        spec,
        (
            jnp.ones((MAX_DEPTH, MAX_WIDTH)) * (jnp.arange(MAX_DEPTH) < depth)[:, None],
            jnp.ones((MAX_DEPTH, MAX_WIDTH, MAX_WIDTH)),
            jnp.ones(MAX_WIDTH),
        ),
    )
    _, gate, output_gate = soft_threshold(on, 0.5, 200.0)
    values = regularizers(on, gate, output_gate)
    # every neuron on and every weight 1 > t: all connections survive (σ(100) = 1 in float64)
    np.testing.assert_allclose(values["sparsity"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(values["compactness"], 1.0, rtol=1e-12)
    np.testing.assert_allclose(values["binarization"], 0.0, atol=1e-12)
    half = eqx.tree_at(lambda s: s.neuron_mask, on, on.neuron_mask * 0.5)
    values = regularizers(half, gate, output_gate)
    np.testing.assert_allclose(values["binarization"], 1.0, rtol=1e-12)  # 4·½·½ on every used neuron
    np.testing.assert_allclose(values["compactness"], 0.5, rtol=1e-12)


def test_latent_objective_gradient_matches_central_differences():
    # the shipped model's weights in float64 (a new SwatAutoencoder draws its weights op by op: seconds of compiling)
    model = jax.tree_util.tree_map(
        lambda leaf: leaf.astype(jnp.float64) if eqx.is_inexact_array(leaf) else leaf, load_pretrained()
    )
    task = make_task("booth", 0)
    x, y = jnp.asarray(task.x_train[:64]), jnp.asarray(task.y_train[:64])
    from jaxnls.swat._search import _objective

    config = SearchConfig()

    @jax.jit
    def objective(z):
        decoded = jax.tree_util.tree_map(lambda leaf: leaf[1], model.decode(jnp.tanh(z), 0.5))
        return _objective(decoded, 0.02, x, y, 0.5, config)

    z = 0.3 * jax.random.normal(jax.random.PRNGKey(1), (model.latent_size,), jnp.float64)
    direction = jax.random.normal(jax.random.PRNGKey(2), (model.latent_size,), jnp.float64)
    np.testing.assert_allclose(
        jax.grad(objective)(z) @ direction, directional_difference(objective, z, direction), rtol=1e-6
    )


def test_bad_input_is_rejected():
    model = load_pretrained()
    x = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match="inputs"):
        search(model, np.zeros((10, 3)), np.zeros(10), jax.random.PRNGKey(0), SEARCH)
    with pytest.raises(ValueError, match="finite"):
        search(model, x, np.full(10, np.nan), jax.random.PRNGKey(0), SEARCH)
    with pytest.raises(ValueError, match="depth"):
        train_dense(x, np.zeros(10), jax.random.PRNGKey(0), 5)
    with pytest.raises(ValueError, match="positive"):
        train_autoencoder(jax.random.PRNGKey(0), steps=0)
    with pytest.raises(ValueError, match="hard_weight"):
        train_autoencoder(jax.random.PRNGKey(0), steps=1, hard_weight=-1.0)
    with pytest.raises(ValueError, match="size_weight needs hard_weight"):
        train_autoencoder(jax.random.PRNGKey(0), steps=1, size_weight=0.1)
    with pytest.raises(ValueError, match="size_measure must be 'neurons' or 'connections', got 'weights'"):
        train_autoencoder(jax.random.PRNGKey(0), steps=1, hard_weight=1.0, size_weight=0.1, size_measure="weights")


def test_shipped_autoencoder_reconstructs_held_out_networks(tmp_path):
    model = load_pretrained()
    figures = evaluate_reconstruction(model, jax.random.PRNGKey(31337), num_networks=128)
    assert figures["reconstruction"] < 0.25 * figures["baseline"], figures
    save_autoencoder(tmp_path / "copy.eqx", model)
    copy = load_autoencoder(tmp_path / "copy.eqx")
    assert copy.options == model.options
    spec = random_mlp(jax.random.PRNGKey(5))
    np.testing.assert_array_equal(copy.encode(spec), model.encode(spec))


def test_training_stopped_and_resumed_from_its_checkpoint_is_the_uninterrupted_training(tmp_path):
    """``train_autoencoder(checkpoint=...)``: a run stopped by its time budget saves its state, and the same call
    resumes it to the very model and loss curve of a run that never stopped; a checkpoint written by another
    training is refused by name; nothing is left but the checkpoint file."""
    tiny = dict(latent_size=4, width=8, heads=2, decoder_width=8, decoder_depth=1)
    common = dict(steps=5, batch_size=4, num_points=8, **tiny)
    whole, whole_losses = train_autoencoder(jax.random.PRNGKey(3), **common)
    path = tmp_path / "training.ckpt"
    _, first = train_autoencoder(jax.random.PRNGKey(3), checkpoint=path, max_seconds=0.0, **common)
    assert first.shape == (1,) and path.exists()
    resumed, losses = train_autoencoder(jax.random.PRNGKey(3), checkpoint=path, checkpoint_every=2, **common)
    np.testing.assert_array_equal(np.asarray(losses), np.asarray(whole_losses))
    for a, b in zip(
        jax.tree_util.tree_leaves(eqx.filter(resumed, eqx.is_array)),
        jax.tree_util.tree_leaves(eqx.filter(whole, eqx.is_array)),
    ):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["training.ckpt"]
    with pytest.raises(ValueError, match="batch_size"):
        train_autoencoder(jax.random.PRNGKey(3), checkpoint=path, **dict(common, batch_size=8))
    with pytest.raises(ValueError, match="key"):
        train_autoencoder(jax.random.PRNGKey(4), checkpoint=path, **common)
    with pytest.raises(ValueError, match="checkpoint_every"):
        train_autoencoder(jax.random.PRNGKey(3), checkpoint=path, checkpoint_every=0, **common)


def test_retrain_keeps_the_architecture_and_fits_a_teacher_of_that_architecture():
    """Data made by a sparse network (the truth: zero error is reachable with its pattern); from its weights
    perturbed, retrain keeps every zero, mask and activation and brings the error close to zero."""
    key_teacher, key_noise, key_points, key_train = jax.random.split(jax.random.PRNGKey(7), 4)
    teacher = harden(random_mlp(key_teacher), 0.3)
    x = jax.random.uniform(key_points, (512, 2), minval=-1.0, maxval=1.0)
    y = forward(teacher, x)
    noise = lambda a, k: a + 0.3 * jax.random.normal(k, a.shape) * (a != 0)
    keys = jax.random.split(key_noise, 3)
    start = eqx.tree_at(
        lambda s: (s.weights, s.output_weights, s.output_bias),
        teacher,
        (noise(teacher.weights, keys[0]), noise(teacher.output_weights, keys[1]), teacher.output_bias + 0.2),
    )
    before = float(mse(start, x, y))
    retrained = retrain(start, x, y, key_train, SearchConfig(steps=1500, learning_rate=0.01))
    after = float(mse(retrained, x, y))
    np.testing.assert_array_equal(np.asarray(retrained.weights) == 0, np.asarray(teacher.weights) == 0)
    np.testing.assert_array_equal(np.asarray(retrained.output_weights) == 0, np.asarray(teacher.output_weights) == 0)
    np.testing.assert_array_equal(np.asarray(retrained.neuron_mask), np.asarray(teacher.neuron_mask))
    np.testing.assert_array_equal(np.asarray(retrained.activation_logits), np.asarray(teacher.activation_logits))
    assert int(retrained.depth) == int(teacher.depth)
    assert before > 1e-3 and after < 0.02 * before, (before, after)


def test_prune_keeps_the_largest_weights_by_an_independent_count():
    """The k largest |w| over hidden and output weights survive (sorted here with NumPy), nothing else changes."""
    for seed in range(2):
        network = harden(random_mlp(jax.random.PRNGKey(seed)), 0.0)
        magnitudes = np.concatenate(
            [np.abs(np.asarray(network.weights)).ravel(), np.abs(np.asarray(network.output_weights))]
        )
        present = int(np.count_nonzero(magnitudes))
        for k in (0, 1, present // 2, present, present + 5):
            pruned = prune(network, k)
            kept = np.concatenate([np.asarray(pruned.weights).ravel(), np.asarray(pruned.output_weights)])
            assert np.count_nonzero(kept) == min(k, present)
            if 0 < k < present:
                assert np.abs(kept[kept != 0]).min() >= np.sort(magnitudes)[::-1][k - 1]
            survivors = kept != 0
            np.testing.assert_array_equal(
                kept[survivors],
                np.concatenate([np.asarray(network.weights).ravel(), np.asarray(network.output_weights)])[survivors],
            )
            for field in ("biases", "activation_logits", "neuron_mask", "output_bias", "depth"):
                np.testing.assert_array_equal(np.asarray(getattr(pruned, field)), np.asarray(getattr(network, field)))
    with pytest.raises(ValueError, match="nonzeros"):
        prune(network, -1)


@pytest.mark.slow  # compilations of the full training step: ~15-30 s each on 2 cores
@pytest.mark.parametrize("measure", ["neurons", "connections"])
def test_size_weight_makes_the_hard_decodings_smaller(measure):
    """A dominant size term: after the same few steps from the same start, the hard decodings of held-out members
    switch on fewer neurons, or keep fewer connections, than without it (counted from the decoded 0/1 masks: the
    neurons here, the connections by the independently tested ``connection_fraction``)."""
    options = dict(width=8, heads=2, decoder_width=16, steps=12, batch_size=4, num_points=8, learning_rate=3e-2)
    key = jax.random.PRNGKey(5)
    plain, _ = train_autoencoder(key, hard_weight=1.0, **options)
    sized, _ = train_autoencoder(key, hard_weight=1.0, size_weight=1.0, size_measure=measure, **options)
    members = jax.vmap(random_mlp)(jax.random.split(jax.random.PRNGKey(6), 64))

    def size(model):
        decoded = jax.vmap(lambda m: model.decode(model.encode(m)))(members)
        if measure == "neurons":
            return float(jnp.mean(jnp.sum(decoded.neuron_mask, axis=(-2, -1))))
        return float(jnp.mean(jax.vmap(jax.vmap(connection_fraction))(decoded)))

    assert size(sized) < 0.5 * size(plain), (size(sized), size(plain))
