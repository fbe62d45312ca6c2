"""The evaluation suite: prompt suites, methods, generation, metrics and reports."""
