"""What every table value carries beside its fields: its version (``"v"``, first in its JSON).

One more than the version of the value it replaces; the versioned store
(:mod:`pipeline.streaming.versions`) applies a changelog record only over an older one.
"""

VERSION = "v"
