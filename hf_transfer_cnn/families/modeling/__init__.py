"""Model code of the families this package defines. Each module is self-contained (torch, torchvision and
transformers only): ``save_pretrained`` copies it next to the weights, so a checkpoint also loads with
``trust_remote_code=True`` where hf-transfer-cnn is not installed."""
