"""The composed Hydra config, validated once before anything heavy starts (`validate`), group by group (`groups`)."""
