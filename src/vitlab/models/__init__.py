"""Model families. Importing this package registers every variant."""

from vitlab.models import vit  # noqa: F401
