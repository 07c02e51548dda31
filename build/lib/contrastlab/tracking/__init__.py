"""Tracking: loggers (W&B with fault tolerance), sweep bookkeeping, and the local leaderboard of runs."""
