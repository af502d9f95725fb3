"""Search spaces: small named define-by-run functions that only call trial.suggest_*."""
