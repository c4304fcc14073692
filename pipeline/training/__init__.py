"""Training the micro agent here, on CPU, from the evaluation's own prompt code."""
