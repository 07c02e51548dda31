"""Export trained checkpoints to the formats the serving tools load."""
