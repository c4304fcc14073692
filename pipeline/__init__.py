"""starkv-eval pipeline: config, models, agent, benchmarks, the Ray run, results, MLflow, CLI."""
