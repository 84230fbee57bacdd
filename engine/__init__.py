"""ShardLab's engine: job spec, models and data, strategies, the torchrun worker,
metrics, launcher and run store, estimator and CLI. Never imports streamlit."""
