"""The study's steps, one folder each in `run` order (build_data, evaluate, analyze, heads, validate),
the `run` chain, grids, and the registry of commands. In a step only its stage file touches the
configuration, the run directory and progress; everything else there is pure computation."""
