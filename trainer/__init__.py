"""Fine-tuning of open_clip models on a product catalog, writing gate candidates."""
