from quark_lightning.matrix.alignment_matrix import CATEGORIES, AlignmentMatrix, Dimension, MatrixScores

__all__ = ["CATEGORIES", "AlignmentMatrix", "Dimension", "MatrixScores"]
