"""The study's vocabulary, importing nothing else of the package: records, the prompt layout and token
groups, scoring, statistics, typed results, names, paths, errors."""
