"""MLflow: logging runs, what a person reads in the UI, syncing from Parquet, moving artifact stores."""
