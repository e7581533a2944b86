"""Rule modules, one per category. Importing this package registers every rule."""

from . import advisory, attention, dataloader, device, observability, optimizer, precision  # noqa: F401
