"""Training and evaluation machinery (COCOeval, proposal recall)."""
