"""The click command lines: ``submit-function`` (users) and ``faas-admin`` (sysadmins)."""
