"""llmi's command line: the one place where the packages (graph, servers, judges, evals, rl) are put together."""
