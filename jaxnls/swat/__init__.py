"""SWAT-NN (Huang, Montazerin & Srivastava, arXiv 2506.08270): architecture-and-weights search in a latent
space — the CORNN-style 2-D regression task suite, the MLP family and its token encoding, the
multi-scale functional autoencoder, and the latent search with its hard, sparse read-out."""

from ._autoencoder import (
    PRETRAINED_OPTIONS,
    SwatAutoencoder,
    evaluate_reconstruction,
    load_autoencoder,
    load_pretrained,
    reconstruction_errors,
    save_autoencoder,
    train_autoencoder,
)
from ._family import MLPSpec, StraightThrough, decode, encode, forward, random_mlp
from ._search import (
    SearchConfig,
    SearchResult,
    harden,
    mse,
    network_size,
    prune,
    refine,
    regularizers,
    retrain,
    search,
    soft_threshold,
    train_dense,
)
from ._tasks import TEST_FUNCTIONS, RegressionTask, TaskFunction, make_task

__all__ = [
    "PRETRAINED_OPTIONS",
    "TEST_FUNCTIONS",
    "MLPSpec",
    "RegressionTask",
    "SearchConfig",
    "SearchResult",
    "StraightThrough",
    "SwatAutoencoder",
    "TaskFunction",
    "decode",
    "encode",
    "evaluate_reconstruction",
    "forward",
    "harden",
    "load_autoencoder",
    "load_pretrained",
    "make_task",
    "mse",
    "network_size",
    "prune",
    "random_mlp",
    "reconstruction_errors",
    "refine",
    "regularizers",
    "retrain",
    "save_autoencoder",
    "search",
    "soft_threshold",
    "train_autoencoder",
    "train_dense",
]
