"""Generated wire types for gateway.v1 (do not edit; run proto/generate.py).

Internal: only the serialization layer (gateway/wire.py) and transport/ import these.
"""
