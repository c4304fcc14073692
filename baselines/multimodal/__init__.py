"""Methods made for vision-language prompts: screenshot-aware scoring, merging and in-prefill pruning."""
