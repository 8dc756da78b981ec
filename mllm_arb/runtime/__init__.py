"""How any stage runs and stores: run directories, units and resume, ranks, configuration, progress,
and the one stage skeleton."""
