"""One process or many: `runtime` (the single-process `Runtime`, the seam every other wing calls: device,
precision, rank and world, reductions, seeding), `torchrun` (`DistributedRuntime` on torch.distributed, and the
`finch train --nproc-per-node` relaunch), `fsdp` (FSDP2 sharding and sharded checkpoints), `connect` (which runtime a
run gets). Imports only `finch.errors`.
"""
