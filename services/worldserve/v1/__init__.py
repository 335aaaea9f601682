"""Generated gRPC stubs of worldserve.v1 (scripts/gen_protos.py). Do not edit."""
