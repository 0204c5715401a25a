"""Powens open banking: connections, accounts, transactions."""
