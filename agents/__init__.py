"""Faust agents, one module per agent family. Each agent's decision is a pure function."""
