"""Who may call the service and what they may do: clients, roles, the audit log."""
