"""Resilience decisions without I/O: retries, budgets, outlier ejection, limits, faults, mirrors."""
