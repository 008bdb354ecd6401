"""Access layer: who reads and writes (principals), what they may see (the visibility rule) and the
audit log of reads. It imports only the base layer (errors, config); storage and the API use it.
"""
