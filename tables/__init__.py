"""Faust tables, one module per table family: its Table, its value type, its update rule."""
