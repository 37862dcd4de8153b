"""Speech AI: engines behind one interface, the model registry, worker nodes and how work reaches them."""
