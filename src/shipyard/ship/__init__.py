"""``shipyard ship``: one command from a trained model to verified, benchmarked artifacts."""
