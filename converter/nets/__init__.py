"""Networks built from a mapping table's ``graph``, in TF-Slim's exact semantics, for checking ports."""
