"""Progress callbacks `progress(done, total)` backed by tqdm."""
from __future__ import annotations


def progress_bar(enabled: bool, desc: str):
    """A tqdm-backed `progress(done, total)` callback, or None."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    bar = {"bar": None}

    def update(done: int, total: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=total, desc=desc, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()

    return update
