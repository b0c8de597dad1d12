"""Readers for reference problem files: NIST StRD regression problems, g2o / TORO pose graphs and
BAL bundle-adjustment problems."""

from ._atomic import write_atomically
from ._errors import FileFormatError
from .graph_files import (
    QUATERNION_TOLERANCE,
    BALProblem,
    GraphFormatError,
    PoseGraph2D,
    PoseGraph3D,
    detect_format,
    nearest_positive_definite,
    parse_bal,
    parse_g2o,
    parse_toro,
    read_bal,
    read_g2o,
    read_pose_graph,
    read_toro,
    sqrt_information,
    write_bal,
    write_g2o,
    write_toro,
)
from .nist import NistFormatError, NistModel, NistProblem, log_relative_error, parse_nist, read_nist

__all__ = [
    "QUATERNION_TOLERANCE",
    "BALProblem",
    "FileFormatError",
    "GraphFormatError",
    "NistFormatError",
    "NistModel",
    "NistProblem",
    "PoseGraph2D",
    "PoseGraph3D",
    "detect_format",
    "log_relative_error",
    "nearest_positive_definite",
    "parse_bal",
    "parse_g2o",
    "parse_nist",
    "parse_toro",
    "read_bal",
    "read_g2o",
    "read_nist",
    "read_pose_graph",
    "read_toro",
    "sqrt_information",
    "write_atomically",
    "write_bal",
    "write_g2o",
    "write_toro",
]
