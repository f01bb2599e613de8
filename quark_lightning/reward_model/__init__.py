"""Reward models of the matrix: the scalar ORM (backbone + MLP head, its save/load: `scalar_rm`), the
preference-pair datasets it trains and is evaluated on (`pair_datasets`), its Bradley-Terry loss with ties
(`ties_loss`), the Lightning module that trains it (`rm_training_module`), and the pipeline stage
`reward_model` (`training`: the run; `rm_settings`: composing and validating the config node;
`rm_backbone`: the backbone and how it trains; `heldout`: held-out metrics; `rm_cache`: a reward model
trained once on demand and cached). As matrix dimensions they are scored by `scorers/orm.py`."""
