"""Fuzzing ckec with hostile inputs: mutated specs, mutated IR texts and damaged model files.

`mutators` makes the cases, `harness` runs each through ckec's own entry point in a forked
worker bounded in time and memory and classifies what happened, `run_fuzz` is the long run
(`python -m tests.fuzz.run_fuzz --help`), `test_fuzz` the short one CI runs.
"""
