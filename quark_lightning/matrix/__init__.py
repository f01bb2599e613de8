from quark_lightning.matrix.alignment_matrix import AlignmentMatrix, MatrixScores
from quark_lightning.matrix.dimension import CATEGORIES, Dimension

__all__ = ["CATEGORIES", "AlignmentMatrix", "Dimension", "MatrixScores"]
