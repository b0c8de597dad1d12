"""SWAT-NN (Huang, Montazerin & Srivastava, arXiv 2506.08270): architecture-and-weights search in a latent
space. So far: the CORNN-style 2-D regression task suite (``make_task``, ``TEST_FUNCTIONS``)."""

from ._tasks import TEST_FUNCTIONS, RegressionTask, TaskFunction, make_task

__all__ = ["TEST_FUNCTIONS", "RegressionTask", "TaskFunction", "make_task"]
