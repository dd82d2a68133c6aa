"""Names of the internal columns dpipe adds to training frames (never features, never written)."""

LABEL = "__dpipe_label__"
VALID = "__dpipe_valid__"
#: A per-row number in [0, 2520) from the split hash; ``FOLD % k`` assigns k equal folds (k <= 10).
FOLD = "__dpipe_fold__"
FOLD_MODULUS = 2520
INTERNAL = (LABEL, VALID, FOLD)
