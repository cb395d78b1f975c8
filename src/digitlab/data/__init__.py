"""Data layer: IDX/CSV/.mat/PNG readers, dataset registry with verified downloads, splits,
preprocessing and augmentation.

Images stay uint8 (n, h, w) until :class:`Preprocessor` turns them into float32 (n, d) features;
labels are int64 (n,). Nothing here knows about models.
"""

from digitlab.data.augment import Augmenter, augment, elastic, elastic_fields, warp
from digitlab.data.download import fetch
from digitlab.data.formats import read_csv, read_image_folder, read_letters_mat, write_csv
from digitlab.data.idx import read_idx, write_idx
from digitlab.data.preprocess import Preprocessor
from digitlab.data.registry import (
    DATASETS,
    Dataset,
    Source,
    download,
    list_datasets,
    load,
    locate,
)
from digitlab.data.splits import (
    SEED_SPLIT,
    Splits,
    filter_classes,
    first,
    holdout,
    last,
    make_splits,
    one_hot,
    random_subset,
)

__all__ = [
    "DATASETS",
    "SEED_SPLIT",
    "Augmenter",
    "Dataset",
    "Preprocessor",
    "Source",
    "Splits",
    "augment",
    "download",
    "elastic",
    "elastic_fields",
    "fetch",
    "filter_classes",
    "first",
    "holdout",
    "last",
    "list_datasets",
    "load",
    "locate",
    "make_splits",
    "one_hot",
    "random_subset",
    "read_csv",
    "read_idx",
    "read_image_folder",
    "read_letters_mat",
    "warp",
    "write_csv",
    "write_idx",
]
