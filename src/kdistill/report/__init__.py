"""Reports from run directories: tables (mean ± std), plots, parameter accounting."""
