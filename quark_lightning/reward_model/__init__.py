"""Reward models of the matrix: the scalar ORM (backbone + MLP head, `scalar_rm`), its Bradley-Terry loss with
ties (`ties_loss`), and the pipeline stage that trains it (`training`). As matrix dimensions they are scored by
`scorers/orm.py`."""
