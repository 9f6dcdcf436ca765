"""Domain logic: plain Python, no grpc, tritonclient or torch imports."""
