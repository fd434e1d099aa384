"""HTTP header names of the cachenet protocol and the Hugging Face headers our servers send."""

from typing import Final

__all__ = (
    "BLAKE3_HEADER",
    "CELL_HEADER",
    "DEMAND_HEADER",
    "HF_COMMIT_HEADER",
    "HF_ERROR_CODE_HEADER",
    "HF_ERROR_MESSAGE_HEADER",
    "HF_LINKED_ETAG_HEADER",
    "HF_LINKED_SIZE_HEADER",
    "ONLY_IF_CACHED_HEADER",
    "REPAIR_HEADER",
    "STALE_REF_HEADER",
)

# A block's BLAKE3 digest: sent with every block served, and with every block uploaded
# (the origin refuses an upload whose bytes do not match it).
BLAKE3_HEADER: Final = "X-Block-Blake3"
# The device's cell (where it is), for demand statistics per cell.
CELL_HEADER: Final = "X-Cachenet-Cell"
# "1" on the manifest request of the model a device pulls (not its base's): that request counts
# as one request for the model in the node's demand, as the files of an HF download add up to one.
DEMAND_HEADER: Final = "X-Cachenet-Demand"
# "1": answer from what the node holds, never fetch upstream (peers ask so; misses never cascade).
ONLY_IF_CACHED_HEADER: Final = "X-Cachenet-Only-If-Cached"
# Sent by multicast members fetching the pieces they lost (the session id): counted as repair.
REPAIR_HEADER: Final = "X-Cachenet-Repair"
# A mirror answering from its last known commit because the upstream did not answer.
STALE_REF_HEADER: Final = "X-Cachenet-Stale-Ref"
# Hugging Face: the commit a revision resolved to, and an LFS file's SHA-256 and size.
HF_COMMIT_HEADER: Final = "X-Repo-Commit"
HF_LINKED_ETAG_HEADER: Final = "X-Linked-Etag"
HF_LINKED_SIZE_HEADER: Final = "X-Linked-Size"
# Hugging Face: what a 404 lacks (RepoNotFound, RevisionNotFound, EntryNotFound) and why.
HF_ERROR_CODE_HEADER: Final = "X-Error-Code"
HF_ERROR_MESSAGE_HEADER: Final = "X-Error-Message"
