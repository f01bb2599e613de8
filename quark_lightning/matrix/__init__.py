from quark_lightning.matrix.matrix import CATEGORIES, AlignmentMatrix, Dimension, MatrixScores

__all__ = ["CATEGORIES", "AlignmentMatrix", "Dimension", "MatrixScores"]
