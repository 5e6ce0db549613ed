"""Routed network mode (``--net routed``): a real interface, an allowlist the kernel enforces.

The sandbox gets ``eth0`` (one end of a veth pair) with a private address and a default
route; the other end lies in the uplink namespace (the supervisor's own, or the policy's
``uplink``), where the sandbox cannot reach. There a per-sandbox process, the router
(``_router``), holds an nftables table (``_nft``) that lets out only TCP and UDP to allowed
destinations and drops and counts the rest, and answers the sandbox's DNS (``_dns``): only
allowed names resolve, and their addresses become reachable, for their TTL, just before the
answer is sent.
"""
