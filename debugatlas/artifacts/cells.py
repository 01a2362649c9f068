"""cells.csv: one row per valid cell of every atlas grid of a run."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from .atomic import write_text
from .paths import CELLS_FILE


def cells_table(atlases: Mapping[int, Any], image_ids, class_names: Sequence[str]):
    """A pandas DataFrame: grid_size, i, j, count, top_class, n_<class>..., attr_<class>..., exemplar_ids.

    `image_ids` [N] maps the atlases' sample indices to dataset image ids.
    """
    import pandas as pd

    rows = []
    for g, atlas in atlases.items():
        for i, j in atlas.valid_cells():
            row: dict[str, Any] = {"grid_size": g, "i": i, "j": j, "count": int(atlas.counts[i, j])}
            hist = atlas.class_histogram[i, j]
            row["top_class"] = class_names[int(hist.argmax())]
            for k, name in enumerate(class_names):
                row[f"n_{name}"] = int(hist[k])
            for k, name in enumerate(class_names):
                row[f"attr_{name}"] = float(atlas.mean_attribution[i, j, k])
            row["exemplar_ids"] = " ".join(str(int(image_ids[s])) for s in atlas.exemplars.get((i, j), []))
            rows.append(row)
    return pd.DataFrame(rows)


def write_cells(run_dir: str | Path, atlases: Mapping[int, Any], image_ids, class_names: Sequence[str]) -> Path:
    """Write `run_dir/cells.csv` (`cells_table`) atomically."""
    return write_text(Path(run_dir) / CELLS_FILE, cells_table(atlases, image_ids, class_names).to_csv(index=False))
