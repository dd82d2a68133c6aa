"""Names of the internal columns dpipe adds to training frames (never features, never written)."""

LABEL = "__dpipe_label__"
#: The row's side of the split (int8): TRAIN, VALID or TEST (dpipe.split).
SIDE = "__dpipe_side__"
TRAIN, VALID, TEST = 0, 1, 2
#: The row's cross-validation fold (int8), with ``split.folds``.
CV_FOLD = "__dpipe_cv_fold__"
#: A per-row number in [0, 2520) from the split hash; ``FOLD % k`` assigns k equal folds (k <= 10).
FOLD = "__dpipe_fold__"
FOLD_MODULUS = 2520
INTERNAL = (LABEL, SIDE, FOLD, CV_FOLD)
