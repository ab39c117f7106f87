"""Faust tables, one module per table family: its Table, its value type, its update rule.

Every value carries a version, and the RocksDB store applies changelog records only when they
are newer than what it holds (:mod:`pipeline.streaming.versions`).
"""

from pipeline.streaming import versions

versions.install()
