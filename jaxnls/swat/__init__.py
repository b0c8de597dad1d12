"""SWAT-NN (Huang, Montazerin & Srivastava, arXiv 2506.08270): architecture-and-weights search in a latent
space. So far: the CORNN-style 2-D regression task suite (``make_task``, ``TEST_FUNCTIONS``) and the MLP
family with its row-wise token encoding (``MLPSpec``, ``random_mlp``, ``forward``, ``encode``, ``decode``)."""

from ._family import MLPSpec, decode, encode, forward, random_mlp
from ._tasks import TEST_FUNCTIONS, RegressionTask, TaskFunction, make_task

__all__ = ["TEST_FUNCTIONS", "MLPSpec", "RegressionTask", "TaskFunction", "decode", "encode", "forward", "make_task",
           "random_mlp"]
