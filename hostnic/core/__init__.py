"""The one owner of networks and claims: lending, pools, guards,
reconciliation, locks, retries; its own commands and the ports it needs.
No wire format and no front end's types."""
