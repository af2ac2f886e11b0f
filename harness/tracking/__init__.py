"""Optional experiment tracking of result records (MLflow)."""
