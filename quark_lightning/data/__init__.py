"""Prompt data: schema validation, loading (JSONL / Parquet / hub), the LightningDataModule, assets."""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
BUNDLED_PROMPTS = ASSETS / "medical_prompts.jsonl"
