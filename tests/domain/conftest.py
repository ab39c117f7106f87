"""Tests of the pure rules (pipeline.domain): no Faust, no settings, no environment. They run
in the same interpreter as the unit tests, so the layer test checks the purity in a fresh one
(test_layers.py)."""
