"""The ResCNN: its registered layers, the network, the triplet loss, and the checkpoint and run-folder layout."""
