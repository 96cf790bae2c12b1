"""Project cache items: the JSON item store, the per-app plugins that build items, the
project source, the rebuild locks and the sync that runs a plugin under them."""
