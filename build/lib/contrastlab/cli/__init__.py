"""Command-line entry points: thin Hydra mains over the layers below, and the one error boundary."""
