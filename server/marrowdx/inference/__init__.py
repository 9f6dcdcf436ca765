"""The only code that speaks to Triton (and the Python-backend model it hosts)."""
