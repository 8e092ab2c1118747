"""condex benchmarks (not tests): each subpackage runs with `python -m benchmarks.<name>`.

A regular package on purpose: Opacus installs a top-level `benchmarks` package that would otherwise
shadow this namespace package."""
