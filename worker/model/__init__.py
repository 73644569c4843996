"""The model: the scoring engine (one thread owns the device), the scorer, the prompt, one folder per family."""
