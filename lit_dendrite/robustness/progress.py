"""Progress of a robustness evaluation counted in images, the unit a person waits for, with a rate and the time left
(counted in batches of 500, a digits CNN's PGD showed ``0/1`` for half an hour)."""

from __future__ import annotations

from tqdm.auto import tqdm


def image_progress(total: int, description: str, enabled: bool = True) -> tqdm:
    """A progress bar over ``total`` images (an attack's: images x epsilons x restarts) showing images per second
    and the estimated time left; cleared when it closes."""
    return tqdm(total=total, desc=description, unit="img", disable=not enabled, leave=False, dynamic_ncols=True)


def counted(count: int, what: str) -> str:
    """``1 epsilon``, ``8 epsilons``."""
    return f"{count} {what}" if count == 1 else f"{count} {what}s"
