"""Run machinery: fitting a run, checkpoints and resume, non-finite and pre-emption guards, data order, run files."""
