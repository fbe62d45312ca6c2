"""GenEval's object-focused tasks on natural models: the prompt suite (`suite`), the scoring rules over a judge's
detections (`rules`); the judge itself is the `geneval` metric (`benchmark.metrics.geneval`). docs/geneval.md."""
