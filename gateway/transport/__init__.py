"""gRPC over mTLS: the only package that talks to the network."""
