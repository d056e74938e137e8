"""lightning-zk: verifiable training for PyTorch Lightning."""
